local p, t, id = ARGV[1], ARGV[2], ARGV[3]
local e = take(p, id, ARGV[4], tonumber(ARGV[5]))
if not e then return 0 end
local a, _, il, hl, s = head(e)
local body = e
if a then body = string.sub(e, s + il + hl) else id = 'foreign-' .. call('INCR', p .. ':seq') end
call('RPUSH', t .. ':ready', make(0, '', id, ARGV[6], body))
wake(t, '1')
return 1
