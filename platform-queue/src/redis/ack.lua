local p, id, tok = ARGV[1], ARGV[2], ARGV[3]
local h, have = holder(p, tok, id, tonumber(ARGV[4]))
if not h then return 0 end
if h == tok then settle(p, tok, {id}, have) else drop(p, h) end
return 1
