module github.com/zenspa/zenspa/bench

go 1.24

require (
	github.com/gomodule/redigo v1.9.3
	github.com/lib/pq v1.12.3
)
