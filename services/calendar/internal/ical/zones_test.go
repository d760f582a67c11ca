package ical

import (
	"errors"
	"fmt"
	"sync"
	"testing"
)

func TestZonesLoad(t *testing.T) {
	z, err := NewZones()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		want        string // IANA name of the location; empty when an error is wanted
		wantWindows bool   // for errors: reported as an unmapped Windows name
	}{
		{"Europe/Vienna", "Europe/Vienna", false},
		{"W. Europe Standard Time", "Europe/Berlin", false},
		{"w. europe standard time", "Europe/Berlin", false},
		{"  Romance Standard Time ", "Europe/Paris", false},
		{"Eastern Standard Time", "America/New_York", false},
		{"UTC", "UTC", false},
		{"UTC-02", "Etc/GMT+2", false},
		{"Atlantis Standard Time", "", true},
		{"Mars/Olympus_Mons", "", false},
		{"", "", false},
		{"Local", "", false},
		{"../../etc/passwd", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			loc, err := z.Load(tt.name)
			if tt.want != "" {
				if err != nil || loc.String() != tt.want {
					t.Fatalf("Load(%q) = %v, %v; want %s", tt.name, loc, err, tt.want)
				}
				return
			}
			var uz *UnknownZoneError
			if !errors.Is(err, ErrUnknownTimeZone) || !errors.As(err, &uz) {
				t.Fatalf("Load(%q) = %v, %v; want an *UnknownZoneError", tt.name, loc, err)
			}
			if uz.Windows != tt.wantWindows {
				t.Errorf("Windows = %v, want %v (%v)", uz.Windows, tt.wantWindows, err)
			}
		})
	}
}

// TestWindowsTableLoads checks every IANA zone of the embedded table exists in the tz database
// the tests run with.
func TestWindowsTableLoads(t *testing.T) {
	z, err := NewZones()
	if err != nil {
		t.Fatal(err)
	}
	if len(z.windows) < 100 {
		t.Errorf("table has %d zones, want the full CLDR list (>100)", len(z.windows))
	}
	for win := range z.windows {
		if _, err := z.Load(win); err != nil {
			t.Errorf("Load(%q): %v", win, err)
		}
	}
}

func TestParseWindowsZones(t *testing.T) {
	tests := []struct {
		name, data string
		wantErr    bool
	}{
		{"comments and blank lines", "# c\n\nA Standard Time\tEurope/A\n", false},
		{"no tab", "A Standard Time Europe/A\n", true},
		{"empty IANA name", "A Standard Time\t\n", true},
		{"duplicate, ignoring case", "A Standard Time\tEurope/A\na standard time\tEurope/B\n", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseWindowsZones(tt.data)
			if (err != nil) != tt.wantErr {
				t.Errorf("parseWindowsZones = %v, want error %v", err, tt.wantErr)
			}
		})
	}
}

func TestZonesConcurrent(t *testing.T) {
	z, err := NewZones()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for _, n := range []string{"Europe/Vienna", "Eastern Standard Time", "Asia/Tokyo"} {
				if _, err := z.Load(n); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
}

// TestZonesCacheIsBounded: every spelling of a Windows name shares one cache entry, and names
// that resolve to nothing are not kept, so a client sending made-up names cannot grow the cache
// (noticed while fuzzing the calendar server objects FuzzReadFields reads).
func TestZonesCacheIsBounded(t *testing.T) {
	z, err := NewZones()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"W. Europe Standard Time", "w. europe standard time", "W. EUROPE STANDARD TIME", "w. EuRoPe StAnDaRd TiMe"} {
		loc, err := z.Load(name)
		if err != nil || loc.String() != "Europe/Berlin" {
			t.Fatalf("Load(%q) = %v, %v", name, loc, err)
		}
	}
	for i := range 100 {
		if _, err := z.Load(fmt.Sprintf("Nowhere Standard Time %d", i)); err == nil {
			t.Fatal("a made-up zone loaded")
		}
	}
	if n := len(z.cache); n != 1 {
		t.Errorf("the cache holds %d entries after four spellings of one zone and 100 unknown names, want 1", n)
	}
}
