-- deep-page.lua: a page of the menu deep into the table, the same request
-- all run long. bench/run pages through zenspa once to find the cursor after
-- row 9,000 and hands it over in BENCH_CURSOR; the route ends in "cursor=".
local cursor = os.getenv("BENCH_CURSOR")
if cursor == nil or cursor == "" then
	error("BENCH_CURSOR is not set: bench/run sets it")
end
wrk.path = wrk.path .. cursor
