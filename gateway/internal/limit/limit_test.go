package limit

import (
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestBurstThenRate(t *testing.T) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	l := New(10, 3, 100, c.now)
	for i := range 3 {
		if _, ok := l.Allow("kanzlei/max"); !ok {
			t.Fatalf("request %d of the burst refused", i+1)
		}
	}
	d, ok := l.Allow("kanzlei/max")
	if ok || d != 100*time.Millisecond {
		t.Fatalf("fourth request: ok=%v retry after %s, want refused for 100ms", ok, d)
	}
	if _, ok := l.Allow("kanzlei/eva"); !ok {
		t.Error("another caller is limited by max's burst")
	}
	c.advance(100 * time.Millisecond)
	if _, ok := l.Allow("kanzlei/max"); !ok {
		t.Error("refused after the retry-after time")
	}
	if _, ok := l.Allow("kanzlei/max"); ok {
		t.Error("a refused request must not have been counted, but one token came from nowhere")
	}
}

func TestRemembersBoundedCallers(t *testing.T) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	l := New(1, 1, 4, c.now)
	for _, k := range []string{"a", "b", "c", "d"} {
		l.Allow(k)
	}
	c.advance(time.Second) // a..d are full again: forgetting them is harmless
	l.Allow("e")
	if got := l.Callers(); got != 1 {
		t.Errorf("%d callers remembered after idle ones were dropped, want 1", got)
	}
	for _, k := range []string{"f", "g", "h", "i", "j"} {
		l.Allow(k) // all busy: half are dropped when the bound is met
	}
	if got := l.Callers(); got > 4 {
		t.Errorf("%d callers remembered, bound is 4", got)
	}
}
