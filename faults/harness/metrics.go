package harness

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Sample is one line of a Prometheus text exposition: a metric name, its labels and its value.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Metrics is what a process's /metrics showed at one moment.
type Metrics []Sample

// Sum adds the values of every sample named name whose labels include all of want (a label
// missing from want matches anything).
func (m Metrics) Sum(name string, want map[string]string) float64 {
	var sum float64
next:
	for _, s := range m {
		if s.Name != name {
			continue
		}
		for k, v := range want {
			if s.Labels[k] != v {
				continue next
			}
		}
		sum += s.Value
	}
	return sum
}

// Metrics scrapes the process's /metrics on its OPS_ADDR.
func (p *Process) Metrics(tb testing.TB) Metrics {
	tb.Helper()
	m, err := p.scrape()
	if err != nil {
		tb.Fatalf("harness: %s /metrics: %v", p.Name, err)
	}
	return m
}

func (p *Process) scrape() (Metrics, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.OpsAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	// The plain text format, which parseText reads, whatever the server would negotiate.
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	return parseText(resp.Body)
}

// parseText reads the Prometheus text format: comments are skipped, each other line is
// `name{label="value",...} value [timestamp]`. Enough for counters and gauges; histograms come
// out as their _bucket, _sum and _count samples.
func parseText(r io.Reader) (Metrics, error) {
	var out Metrics
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s := Sample{Labels: map[string]string{}}
		rest := line
		if i := strings.IndexAny(rest, "{ "); i >= 0 && rest[i] == '{' {
			s.Name = rest[:i]
			j, err := parseLabels(rest[i+1:], s.Labels)
			if err != nil {
				return nil, fmt.Errorf("%q: %w", line, err)
			}
			rest = rest[i+1+j:]
		} else if i >= 0 {
			s.Name, rest = rest[:i], rest[i:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return nil, fmt.Errorf("%q: no value", line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", line, err)
		}
		s.Value = v
		out = append(out, s)
	}
	return out, sc.Err()
}

// parseLabels reads `k="v",...}` into into and returns how many bytes it consumed.
func parseLabels(s string, into map[string]string) (int, error) {
	i := 0
	for {
		for i < len(s) && (s[i] == ',' || s[i] == ' ') {
			i++
		}
		if i < len(s) && s[i] == '}' {
			return i + 1, nil
		}
		eq := strings.IndexByte(s[i:], '=')
		if eq < 0 || i+eq+1 >= len(s) || s[i+eq+1] != '"' {
			return 0, fmt.Errorf("bad label at %d", i)
		}
		key := s[i : i+eq]
		i += eq + 2
		var val strings.Builder
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					val.WriteByte('\n')
				default:
					val.WriteByte(s[i])
				}
				continue
			}
			val.WriteByte(s[i])
		}
		if i >= len(s) {
			return 0, fmt.Errorf("unterminated label %s", key)
		}
		into[key] = val.String()
		i++ // the closing quote
	}
}
