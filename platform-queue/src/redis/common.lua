local call = redis.call
local function chunked(cmd, key, args)
  local n = #args
  if n == 0 then return end
  for i = 1, n, 1000 do
    call(cmd, key, unpack(args, i, math.min(i + 999, n)))
  end
end
local function gathered(cmd, key, args)
  local n = #args
  if n == 0 then return {} end
  if n <= 1000 then return call(cmd, key, unpack(args)) end
  local out, k = {}, 0
  for i = 1, n, 1000 do
    local r = call(cmd, key, unpack(args, i, math.min(i + 999, n)))
    for j = 1, #r do k = k + 1; out[k] = r[j] end
  end
  return out
end
local function head(e)
  local a, f, il, hl, s = string.match(e, '^(%d+):(%d*):(%d+):(%d+):()')
  if not a then return nil end
  il, hl = tonumber(il), tonumber(hl)
  if s + il + hl - 1 > #e then return nil end
  return tonumber(a), f, il, hl, s
end
local function id_of(e, pos)
  local a, _, il, _, s = head(e)
  if not a then return '~' .. pos end
  return string.sub(e, s, s + il - 1)
end
local function make(a, f, id, h, b)
  return a .. ':' .. f .. ':' .. #id .. ':' .. #h .. ':' .. id .. h .. b
end
-- The entry with its attempts and first failure replaced; an entry in another shape
-- becomes one of ours with a fresh id, its bytes the body.
local function rewritten(p, e, a, f)
  local x, _, il, hl, s = head(e)
  if not x then return make(a, f, 'foreign-' .. call('INCR', p .. ':seq'), '', e) end
  return a .. ':' .. f .. ':' .. il .. ':' .. hl .. ':' .. string.sub(e, s)
end
local function wake(p, n)
  redis.pcall('PUBLISH', p .. ':wake', n)
end
local function find(list, id)
  if string.byte(id, 1) == 126 then
    local n = tonumber(string.sub(id, 2))
    return n and call('LINDEX', list, n - 1)
  end
  for i, e in ipairs(call('LRANGE', list, 0, -1)) do
    if id_of(e, i) == id then return e end
  end
  return nil
end
local function holder(p, tok, id, now)
  local s = call('ZSCORE', p .. ':leases', tok)
  if s and tonumber(s) > now then
    local done = p .. ':done:' .. tok
    local have = call('SCARD', done)
    if have == 0 or call('SISMEMBER', done, id) == 0 then return tok, have end
  end
  local own = tok .. '/' .. id
  s = call('ZSCORE', p .. ':leases', own)
  if s and tonumber(s) > now then return own end
  return nil
end
local function settle(p, tok, ids, have)
  local list, done = p .. ':rcv:' .. tok, p .. ':done:' .. tok
  if (have or call('SCARD', done)) + #ids >= call('LLEN', list) then
    call('DEL', list, done)
    call('ZREM', p .. ':leases', tok)
  else
    chunked('SADD', done, ids)
  end
end
local function drop(p, own)
  call('DEL', p .. ':rcv:' .. own)
  call('ZREM', p .. ':leases', own)
end
local function take(p, id, tok, now)
  local h, have = holder(p, tok, id, now)
  if not h then return nil end
  if h ~= tok then
    local e = call('LINDEX', p .. ':rcv:' .. h, 0)
    drop(p, h)
    return e or nil
  end
  local e = find(p .. ':rcv:' .. tok, id)
  if e then settle(p, tok, {id}, have) end
  return e or nil
end
