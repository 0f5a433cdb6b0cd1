-- me-token.lua: GET /api/v1/me with the access token bench/run minted and
-- hands over in BENCH_TOKEN.
local token = os.getenv("BENCH_TOKEN")
if token == nil or token == "" then
	error("BENCH_TOKEN is not set: bench/run sets it")
end
wrk.headers["Authorization"] = "Bearer " .. token
