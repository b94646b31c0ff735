local f, t = ARGV[1], ARGV[2]
local es = call('LRANGE', f .. ':ready', 0, tonumber(ARGV[3]) - 1)
if #es == 0 then return 0 end
local back = {}
for i, e in ipairs(es) do back[i] = rewritten(t, e, 0, '') end
call('LTRIM', f .. ':ready', #es, -1)
chunked('RPUSH', t .. ':ready', back)
wake(t, tostring(#back))
return #back
