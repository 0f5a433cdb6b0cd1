module github.com/zenspa/zenspa/bench

go 1.24
