local p, now = ARGV[1], ARGV[2]
local ready, leases = p .. ':ready', p .. ':leases'
local due = call('ZRANGEBYSCORE', p .. ':later', '-inf', now, 'LIMIT', 0, 1000)
chunked('ZREM', p .. ':later', due)
chunked('RPUSH', ready, due)
local moved = #due
local lapsed = call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, 100)
for _, tok in ipairs(lapsed) do
  local list, done = p .. ':rcv:' .. tok, p .. ':done:' .. tok
  local settled = {}
  for _, id in ipairs(call('SMEMBERS', done)) do settled[id] = true end
  local back = {}
  for i, e in ipairs(call('LRANGE', list, 0, -1)) do
    local a, f, il, hl, s = head(e)
    if not a then
      if not settled['~' .. i] then back[#back + 1] = rewritten(p, e, 1, now) end
    elseif not settled[string.sub(e, s, s + il - 1)] then
      if f == '' then f = now end
      back[#back + 1] = (a + 1) .. ':' .. f .. ':' .. il .. ':' .. hl .. ':' .. string.sub(e, s)
    end
  end
  chunked('RPUSH', ready, back)
  call('DEL', list, done)
  moved = moved + #back
end
chunked('ZREM', leases, lapsed)
if moved > 0 then wake(p, tostring(moved)) end
return moved
