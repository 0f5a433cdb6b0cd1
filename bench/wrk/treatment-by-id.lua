-- treatment-by-id.lua: GET /api/v1/treatments/{id} over the ids in the file
-- BENCH_IDS names (one a line; bench/run writes every tenth row of the
-- menu), in turn, each thread from its own place in the list.
local path = os.getenv("BENCH_IDS")
if path == nil or path == "" then
	error("BENCH_IDS is not set: bench/run sets it")
end
local ids = {}
for line in io.lines(path) do
	ids[#ids + 1] = line
end
if #ids == 0 then
	error(path .. " holds no id")
end

local threads = 0
function setup(thread)
	thread:set("start", threads * 97)
	threads = threads + 1
end

local n = 0
function request()
	n = n + 1
	return wrk.format(nil, wrk.path .. ids[(start + n) % #ids + 1])
end
