package redisstore

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

// candidateJSON is the part of a stored tracked email a correlation needs.
type candidateJSON struct {
	MessageID string             `json:"mid"`
	Regarding *tracker.RecordRef `json:"reg,omitempty"`
	SentAt    time.Time          `json:"sent"`
}

// candidateFields are candidateJSON's members.
var candidateFields = []string{"mid", "reg", "sent"}

// decodeCandidate reads the correlation fields of a stored tracked email (Message-ID, regarding
// record, sent time). A reply's evidence needs them of the email it answers, whose JSON is
// mostly the explanation and the links: findMembers finds the three members without decoding
// the rest, and only they are decoded. JSON the scanner does not follow is decoded whole.
func decodeCandidate(raw string) (tracker.Candidate, error) {
	if vals, ok := findMembers(raw, candidateFields); ok {
		if c, err := candidateOf(vals); err == nil {
			return c, nil
		}
	}
	var c candidateJSON
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		return tracker.Candidate{}, fmt.Errorf("decode tracked email: %w", err)
	}
	return tracker.Candidate{MessageID: c.MessageID, Regarding: c.Regarding, SentAt: c.SentAt}, nil
}

// candidateOf decodes the raw values of mid, reg and sent ("" when absent).
func candidateOf(vals []string) (tracker.Candidate, error) {
	var c tracker.Candidate
	if err := jsonString(vals[0], &c.MessageID); err != nil {
		return c, err
	}
	if r := vals[1]; r != "" && r != "null" {
		ref, err := decodeRef(r)
		if err != nil {
			return c, err
		}
		c.Regarding = &ref
	}
	if vals[2] != "" {
		var s string
		if err := jsonString(vals[2], &s); err != nil {
			return c, err
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return c, err
		}
		c.SentAt = t
	}
	return c, nil
}

// refFields are tracker.RecordRef's members.
var refFields = []string{"id", "k", "et", "dn"}

// decodeRef reads a record reference's JSON (the address index holds one per record and
// address, and every message reads those of its addresses) with the member scanner; JSON it
// does not follow is decoded by encoding/json.
func decodeRef(raw string) (tracker.RecordRef, error) {
	var r tracker.RecordRef
	if vals, ok := findMembers(raw, refFields); ok && vals[0] != "" {
		k, err := strconv.Atoi(vals[1])
		if err == nil && jsonString(vals[0], &r.ID) == nil &&
			(vals[2] == "" || jsonString(vals[2], &r.EntityType) == nil) &&
			(vals[3] == "" || jsonString(vals[3], &r.DisplayName) == nil) {
			r.Kind = tracker.RecordKind(k)
			return r, nil
		}
		r = tracker.RecordRef{}
	}
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		return tracker.RecordRef{}, fmt.Errorf("decode record reference: %w", err)
	}
	return r, nil
}

// jsonString decodes a JSON string; one without escapes is taken as it is.
func jsonString(raw string, dst *string) error {
	if len(raw) >= 2 && raw[0] == '"' && raw[len(raw)-1] == '"' && !strings.ContainsAny(raw[1:len(raw)-1], "\\\"") {
		*dst = raw[1 : len(raw)-1]
		return nil
	}
	return json.Unmarshal([]byte(raw), dst)
}

// findMembers returns the raw values of the named top-level members of the object raw, in the
// order of names ("" for a member that is absent); false when raw is not an object it can
// follow. It skips values without decoding them (strings to their closing quote, objects and
// arrays by nesting depth) and stops when it has found every name. It assumes valid JSON, which
// the store wrote itself; the values found are decoded with checks.
func findMembers(raw string, names []string) ([]string, bool) {
	vals := make([]string, len(names))
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return nil, false
	}
	i++
	found := 0
	for found < len(names) {
		i = skipSpace(raw, i)
		if i < len(raw) && raw[i] == '}' {
			break
		}
		if i >= len(raw) || raw[i] != '"' {
			return nil, false
		}
		kEnd, ok := skipString(raw, i)
		if !ok {
			return nil, false
		}
		key := raw[i+1 : kEnd-1]
		v := skipSpace(raw, kEnd)
		if v >= len(raw) || raw[v] != ':' {
			return nil, false
		}
		v = skipSpace(raw, v+1)
		vEnd, ok := skipValue(raw, v)
		if !ok {
			return nil, false
		}
		if n := slices.Index(names, key); n >= 0 && vals[n] == "" {
			vals[n] = raw[v:vEnd]
			found++
		}
		i = skipSpace(raw, vEnd)
		if i < len(raw) && raw[i] == ',' {
			i++
			continue
		}
		if i < len(raw) && raw[i] == '}' {
			break
		}
		return nil, false
	}
	return vals, true
}

func skipSpace(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at s[i] (a quote).
func skipString(s string, i int) (int, bool) {
	for j := i + 1; j < len(s); j++ {
		switch s[j] {
		case '"':
			return j + 1, true
		case '\\':
			j++ // the escaped character
		}
	}
	return 0, false
}

// skipValue returns the index after the value starting at s[i].
func skipValue(s string, i int) (int, bool) {
	if i >= len(s) {
		return 0, false
	}
	switch s[i] {
	case '"':
		return skipString(s, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(s); {
			switch s[j] {
			case '"':
				end, ok := skipString(s, j)
				if !ok {
					return 0, false
				}
				j = end
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, true
				}
			}
			j++
		}
		return 0, false
	default:
		j := i
	literal:
		for ; j < len(s); j++ {
			switch s[j] {
			case ',', '}', ']', ' ', '\t', '\r', '\n':
				break literal
			}
		}
		return j, j > i
	}
}
