local p, id, tok = ARGV[1], ARGV[2], ARGV[3]
local h, have = holder(p, tok, id, tonumber(ARGV[4]))
if not h then return 0 end
local list, done = p .. ':rcv:' .. tok, p .. ':done:' .. tok
if h ~= tok or call('LLEN', list) - have <= 1 then
  call('ZADD', p .. ':leases', ARGV[5], h)
  return 1
end
local e = find(list, id)
if not e then return 0 end
local own = tok .. '/' .. id
call('RPUSH', p .. ':rcv:' .. own, e)
call('ZADD', p .. ':leases', ARGV[5], own)
call('SADD', done, id)
return 1
