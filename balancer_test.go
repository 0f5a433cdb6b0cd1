package main

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Tests of deploy/haproxy.cfg: HAProxy's own check of the file, and the
// drain delay of deploy/zenspa.env against its health checks.

// shippedHAProxyConfig is the configuration deploy/README.md installs.
const shippedHAProxyConfig = "deploy/haproxy.cfg"

// TestHAProxyConfig checks the shipped file as HAProxy reads it, with the
// server addresses it names, and that the drain delay of deploy/zenspa.env
// outlasts the time the checks take to take an instance out.
func TestHAProxyConfig(t *testing.T) {
	t.Parallel()
	haproxy := requireTool(t, "haproxy", "make services-test")
	out, err := exec.Command(haproxy, "-c", "-f", shippedHAProxyConfig).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Configuration file is valid") {
		t.Errorf("haproxy -c -f %s: %v\n%s", shippedHAProxyConfig, err, out)
	}
	if strings.Contains(string(out), "WARNING") || strings.Contains(string(out), "ALERT") {
		t.Errorf("haproxy -c -f %s warns:\n%s", shippedHAProxyConfig, out)
	}

	// An instance that turns unready is out after at most fall checks, one
	// every inter, plus the checks' own time: the drain must last at least
	// one more interval.
	inter, fall := shippedCheckTiming(t)
	drain := deployDuration(t, "SHUTDOWN_DRAIN_DELAY")
	if least := time.Duration(fall+1) * inter; drain < least {
		t.Errorf("SHUTDOWN_DRAIN_DELAY = %s with checks every %s, fall %d: want at least %s, or instances still get requests after their listener closes",
			drain, inter, fall, least)
	}
}

// haproxyLine is one line of the shipped file with the section it is in
// ("global", "backend zenspa") and its words without a comment.
type haproxyLine struct {
	section string
	text    string
	fields  []string
}

// haproxyLines reads the shipped file.
func haproxyLines(t *testing.T) []haproxyLine {
	t.Helper()
	data, err := os.ReadFile(shippedHAProxyConfig)
	mustf(t, err, "read %s", shippedHAProxyConfig)
	var lines []haproxyLine
	section := ""
	for text := range strings.SplitSeq(strings.TrimSuffix(string(data), "\n"), "\n") {
		code, _, _ := strings.Cut(text, "#") // the file has no # but in comments
		fields := strings.Fields(code)
		if len(fields) > 0 && text[0] != ' ' && text[0] != '\t' {
			section = strings.Join(fields, " ")
		}
		lines = append(lines, haproxyLine{section: section, text: text, fields: fields})
	}
	return lines
}

// shippedCheckTiming returns the inter and fall of the shipped backend's
// default-server line.
func shippedCheckTiming(t *testing.T) (inter time.Duration, fall int) {
	t.Helper()
	for _, l := range haproxyLines(t) {
		if l.section != "backend zenspa" || len(l.fields) == 0 || l.fields[0] != "default-server" {
			continue
		}
		for i := 1; i+1 < len(l.fields); i++ {
			switch l.fields[i] {
			case "inter":
				v := l.fields[i+1]
				if _, err := strconv.Atoi(v); err == nil {
					v += "ms" // HAProxy's unit when none is given
				}
				d, err := time.ParseDuration(v)
				mustf(t, err, "%s: inter %q", shippedHAProxyConfig, l.fields[i+1])
				inter = d
			case "fall":
				n, err := strconv.Atoi(l.fields[i+1])
				mustf(t, err, "%s: fall %q", shippedHAProxyConfig, l.fields[i+1])
				fall = n
			}
		}
	}
	if inter == 0 || fall == 0 {
		t.Fatalf("%s: no inter and fall on the default-server line of backend zenspa", shippedHAProxyConfig)
	}
	return inter, fall
}

// deployDuration is a duration variable of deploy/zenspa.env.
func deployDuration(t *testing.T, key string) time.Duration {
	t.Helper()
	data, err := os.ReadFile("deploy/zenspa.env")
	mustf(t, err, "read deploy/zenspa.env")
	vars, err := parseDotenv("deploy/zenspa.env", data)
	mustf(t, err, "parse deploy/zenspa.env")
	d, err := time.ParseDuration(vars[key])
	mustf(t, err, "deploy/zenspa.env: %s", key)
	return d
}
