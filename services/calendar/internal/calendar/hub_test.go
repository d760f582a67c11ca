package calendar

import "testing"

// TestKickEndsOnlyTheReplacedStream: a kick names the session that was replaced. One that
// arrives late — after a still newer session connected — ends nothing but that old session,
// so the newest stream survives however the replicas' messages are ordered.
func TestKickEndsOnlyTheReplacedStream(t *testing.T) {
	h := NewHub()
	a := h.subscribe("kanzlei", "huber", "A")
	b := h.subscribe("kanzlei", "huber", "B")
	other := h.subscribe("kanzlei", "maier", "A")
	kicked := func(s *sub) bool {
		select {
		case <-s.kicked:
			return true
		default:
			return false
		}
	}

	h.Kick("kanzlei", "huber", "A") // B replaced A
	if !kicked(a) || kicked(b) || kicked(other) {
		t.Fatalf("after B replaced A: A kicked %v, B kicked %v, maier's kicked %v; want only A", kicked(a), kicked(b), kicked(other))
	}
	h.Kick("kanzlei", "huber", "Z") // a late message about a session before A
	h.Kick("kanzlei", "huber", "A") // B's message arriving a second time
	if kicked(b) {
		t.Fatal("a late kick about an older session ended the newest stream")
	}
	h.Kick("kanzlei", "huber", "B")
	if !kicked(b) {
		t.Fatal("B's replacement did not end B")
	}
}
