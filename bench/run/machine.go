package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// What the harness reads of the machine, all from Linux's /proc: a
// process's CPU time and memory, the hypervisor's steal, the processes that
// would compete with the servers, and the CPU and kernel for the report.

// procStat returns the fields of /proc/PID/stat after the command name: the
// first one is field 3, the state.
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return strings.Fields(string(b[i+1:])), nil
}

// cpuTime is the user plus system CPU time the process has used.
func cpuTime(pid int) (time.Duration, error) {
	f, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(utime+stime) * time.Second / clockTicks(), nil
}

// clockTicks is USER_HZ, the unit of /proc's CPU times: getconf CLK_TCK,
// and 100, its value on every Linux port that matters, if that fails.
func clockTicks() time.Duration {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && n > 0 {
			return time.Duration(n)
		}
	}
	return 100
}

// rssKB is the process's resident set size (VmRSS) in KiB.
func rssKB(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// machineSteal returns the steal and total CPU time of the machine so far,
// in clock ticks, from /proc/stat: on a virtual machine another guest's load
// shows as steal, and makes every figure of that run worse.
func machineSteal() (steal, total int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0
	}
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i < 8 { // guest time is already in user and nice
			total += n
		}
		if i == 7 {
			steal = n
		}
	}
	return steal, total
}

// waitForIdleMachine waits, up to limit, until no other `go test` or test
// binary runs: they would take the CPU the servers and wrk need. It returns
// what still ran when it gave up, for the report.
func waitForIdleMachine(ctx context.Context, limit time.Duration, say func(string, ...any)) []string {
	deadline := time.Now().Add(limit)
	for {
		others := testProcesses()
		if len(others) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return others
		}
		say("waiting for %d test process(es) to end: %s", len(others), strings.Join(others, "; "))
		_ = sleep(ctx, 10*time.Second)
	}
}

// testProcesses lists the command lines of running `go test` and compiled
// test binaries (name ending in .test).
func testProcesses() []string {
	entries, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		isGoTest := len(args) > 1 && filepath.Base(args[0]) == "go" && args[1] == "test"
		if isGoTest || strings.HasSuffix(args[0], ".test") {
			out = append(out, strings.Join(args[:min(len(args), 4)], " "))
		}
	}
	return out
}

// cpuModel is the first model name in /proc/cpuinfo.
func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// kernel is the running kernel's release.
func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}
