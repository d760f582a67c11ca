package dispatch

import (
	"slices"
	"testing"
)

// TestPartitionSet: a lane's marks hold any partition count, across word boundaries.
func TestPartitionSet(t *testing.T) {
	s := newPartitionSet(1024)
	want := []int{0, 1, 63, 64, 127, 128, 511, 1023}
	for _, p := range want {
		s.add(p)
	}
	s.add(700)
	s.remove(700)
	s.remove(5) // never added
	if got := s.list(nil); !slices.Equal(got, want) {
		t.Errorf("list = %v, want %v", got, want)
	}
	for p := range 1024 {
		if got := s.has(p); got != slices.Contains(want, p) {
			t.Errorf("has(%d) = %v", p, got)
		}
	}
}
