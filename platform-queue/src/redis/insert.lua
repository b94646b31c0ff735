local p, ttl, now, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ready, later = {}, {}
for i = 0, n - 1 do
  local b = 5 + i * 3
  local vis, dk = tonumber(ARGV[b + 1]), ARGV[b + 2]
  if dk == '' or call('SET', p .. ':d:' .. dk, '1', 'NX', 'PX', ttl) then
    if vis <= now then
      ready[#ready + 1] = ARGV[b]
    else
      later[#later + 1] = vis
      later[#later + 1] = ARGV[b]
    end
  end
end
chunked('RPUSH', p .. ':ready', ready)
chunked('ZADD', p .. ':later', later)
if #ready > 0 then wake(p, tostring(#ready)) end
return #ready + #later / 2
