package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
)

// The .env file: finding it, and its format. loadConfig reads it besides the
// environment.

// parseDotenv parses the .env format: KEY=VALUE lines, optional "export ",
// comments and blank lines, single quotes (literal), double quotes (with \n,
// \t, \" and \\ escapes) and an unquoted value that ends at " #". A malformed
// line is an error naming the file and line, never its content, which may be
// a secret.
func parseDotenv(name string, data []byte) (map[string]string, error) {
	vars := make(map[string]string)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	n := 1
	for ; sc.Scan(); n++ {
		key, value, ok, err := parseDotenvLine(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %v", name, n, err)
		}
		if ok {
			vars[key] = value
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s:%d: %v", name, n, err) // n is the line too long to read
	}
	return vars, nil
}

// parseDotenvLine parses one line; ok is false for a blank or comment line.
func parseDotenvLine(line string) (key, value string, ok bool, err error) {
	line = strings.TrimSpace(strings.TrimPrefix(line, "\ufeff"))
	if line == "" || line[0] == '#' {
		return "", "", false, nil
	}
	if rest, found := strings.CutPrefix(line, "export"); found && rest != "" && (rest[0] == ' ' || rest[0] == '\t') {
		line = strings.TrimSpace(rest)
	}
	key, raw, found := strings.Cut(line, "=")
	if !found {
		return "", "", false, errors.New(`expected KEY=VALUE`)
	}
	key = strings.TrimSpace(key)
	if !validEnvKey(key) {
		return "", "", false, errors.New("invalid variable name")
	}
	raw = strings.TrimSpace(raw)
	switch {
	case raw == "":
		return key, "", true, nil
	case raw[0] == '\'':
		end := strings.IndexByte(raw[1:], '\'')
		if end < 0 {
			return "", "", false, fmt.Errorf("%s: unterminated single quote", key)
		}
		value, raw = raw[1:1+end], raw[2+end:]
	case raw[0] == '"':
		var b strings.Builder
		i := 1
		for ; i < len(raw) && raw[i] != '"'; i++ {
			c := raw[i]
			if c == '\\' && i+1 < len(raw) {
				i++
				switch raw[i] {
				case 'n':
					c = '\n'
				case 't':
					c = '\t'
				case 'r':
					c = '\r'
				default:
					c = raw[i]
				}
			}
			b.WriteByte(c)
		}
		if i >= len(raw) {
			return "", "", false, fmt.Errorf("%s: unterminated double quote", key)
		}
		value, raw = b.String(), raw[i+1:]
	case raw[0] == '#': // KEY= # comment
		return key, "", true, nil
	default:
		if i := strings.Index(raw, " #"); i >= 0 {
			raw = raw[:i]
		}
		return key, strings.TrimSpace(raw), true, nil
	}
	// After a closing quote only a comment may follow.
	if rest := strings.TrimSpace(raw); rest != "" && rest[0] != '#' {
		return "", "", false, fmt.Errorf("%s: unexpected text after the closing quote", key)
	}
	return key, value, true, nil
}

// validEnvKey reports whether key is a shell-style variable name.
func validEnvKey(key string) bool {
	if key == "" {
		return false
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		letter := c == '_' || ('A' <= c && c <= 'Z') || ('a' <= c && c <= 'z')
		if !letter && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// envGetter returns a lookup over the environment and the .env file, the
// environment winning, and a description of the file read.
func envGetter(lookupEnv func(string) (string, bool)) (func(string) string, string, error) {
	fileVars, source, err := readEnvFile(lookupEnv)
	if err != nil {
		return nil, "", err
	}
	get := func(key string) string {
		if v, ok := lookupEnv(key); ok {
			return strings.TrimSpace(v)
		}
		return strings.TrimSpace(fileVars[key])
	}
	return get, source, nil
}

// readEnvFile reads ENV_FILE, or .env when ENV_FILE is not set. A missing
// default file is fine; a missing named file is not. It returns the variables
// and a description of what was read.
func readEnvFile(lookupEnv func(string) (string, bool)) (map[string]string, string, error) {
	name, named := lookupEnv("ENV_FILE")
	if !named || name == "" {
		name, named = defaultEnvFile, false
	}
	data, err := os.ReadFile(name)
	if err != nil {
		if !named && errors.Is(err, os.ErrNotExist) {
			return map[string]string{}, "none", nil
		}
		return nil, "", &configError{problems: []string{fmt.Sprintf("ENV_FILE: cannot read %q: %v", name, unwrapPathError(err))}}
	}
	vars, err := parseDotenv(name, data)
	if err != nil {
		return nil, "", &configError{problems: []string{err.Error()}}
	}
	return vars, name, nil
}

// unwrapPathError drops the file name from an *os.PathError, which the caller
// already names.
func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
