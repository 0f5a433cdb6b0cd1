-- create-treatment.lua: POST /api/v1/treatments, each with a name no other
-- request of the benchmark sends: BENCH_RUN (bench/run's tag for this wrk
-- run), the thread and a counter. bench/run deletes these rows (named
-- "Bench ...") after each run.
local run = os.getenv("BENCH_RUN")
if run == nil or run == "" then
	error("BENCH_RUN is not set: bench/run sets it")
end

local threads = 0
function setup(thread)
	threads = threads + 1
	thread:set("thread_id", threads)
end

local token = os.getenv("BENCH_TOKEN")
if token == nil or token == "" then
	error("BENCH_TOKEN is not set: bench/run sets it")
end
-- A manager's token, as zenspa asks of every write (the baseline ignores it).
local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token }
local n = 0
function request()
	n = n + 1
	local body = string.format(
		'{"name":"Bench liệu trình %s-%d-%d","description":"Thư giãn toàn thân","duration_minutes":60,"price":450000}',
		run, thread_id, n)
	return wrk.format("POST", nil, headers, body)
end
