local p, now = ARGV[1], tonumber(ARGV[2])
local leases = p .. ':leases'
local out, k, i = {}, 0, 3
while i <= #ARGV do
  local tok, n = ARGV[i], tonumber(ARGV[i + 1])
  local ids = {}
  for j = 1, n do
    ids[j] = ARGV[i + 1 + j]
    out[k + j] = 0
  end
  local s = call('ZSCORE', leases, tok)
  local live = s and tonumber(s) > now
  local have, marked = 0, nil
  if live then
    have = call('SCARD', p .. ':done:' .. tok)
    if have > 0 then marked = gathered('SMISMEMBER', p .. ':done:' .. tok, ids) end
  end
  local seen, mine, own, own_at = {}, {}, {}, {}
  for j, id in ipairs(ids) do
    if not seen[id] then
      seen[id] = true
      if live and (not marked or marked[j] == 0) then
        mine[#mine + 1] = id
        out[k + j] = 1
      else
        own[#own + 1] = tok .. '/' .. id
        own_at[#own_at + 1] = k + j
      end
    end
  end
  if #mine > 0 then settle(p, tok, mine, have) end
  if #own > 0 then
    local scores = gathered('ZMSCORE', leases, own)
    for m, key in ipairs(own) do
      if scores[m] and tonumber(scores[m]) > now then
        drop(p, key)
        out[own_at[m]] = 1
      end
    end
  end
  k, i = k + n, i + 2 + n
end
return out
