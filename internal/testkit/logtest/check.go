package logtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Check reads a log and reports every line that a log parser would get wrong: a line that is
// not one JSON object, and an object (or a group within it) holding a key twice, which parsers
// resolve by keeping one of the values, silently. One entry per bad line, with its number.
// Blank lines are ignored. Every test and fault scenario that runs the services can call it on
// what they wrote; the suite's logs must pass.
func Check(log string) []string {
	var problems []string
	n := 0
	for line := range strings.Lines(log) {
		n++
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if err := CheckLine([]byte(line)); err != nil {
			problems = append(problems, fmt.Sprintf("line %d: %v: %s", n, err, shorten(line)))
		}
	}
	return problems
}

// CheckLine reports why line is not one JSON object without duplicate keys, or nil.
func CheckLine(line []byte) error {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return errors.New("not JSON")
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return errors.New("not a JSON object")
	}
	if err := object(dec, ""); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("more than one JSON value on the line")
	}
	return nil
}

// object reads the rest of an object whose '{' was read, checking its keys and its values'.
func object(dec *json.Decoder, path string) error {
	seen := map[string]bool{}
	for {
		tok, err := dec.Token()
		if err != nil {
			return errors.New("not JSON")
		}
		if d, ok := tok.(json.Delim); ok && d == '}' {
			return nil
		}
		key, _ := tok.(string)
		if seen[key] {
			return fmt.Errorf("key %q twice", path+key)
		}
		seen[key] = true
		if err := value(dec, path+key+"."); err != nil {
			return err
		}
	}
}

func value(dec *json.Decoder, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return errors.New("not JSON")
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '{':
		return object(dec, path)
	case '[':
		for dec.More() {
			if err := value(dec, path); err != nil {
				return err
			}
		}
		if _, err := dec.Token(); err != nil {
			return errors.New("not JSON")
		}
	}
	return nil
}

func shorten(line string) string {
	if len(line) > 300 {
		return line[:300] + "…"
	}
	return line
}
