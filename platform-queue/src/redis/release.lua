local p, now = ARGV[1], ARGV[4]
local e = take(p, ARGV[2], ARGV[3], tonumber(now))
if not e then return 0 end
local a, f = head(e)
a, f = a or 0, f or ''
if ARGV[6] == '1' and f == '' then f = now end
if ARGV[7] ~= '1' then a = a + 1 end
local back, vis = rewritten(p, e, a, f), tonumber(ARGV[5])
if vis <= tonumber(now) then
  call('RPUSH', p .. ':ready', back)
  wake(p, '1')
else
  call('ZADD', p .. ':later', vis, back)
end
return 1
