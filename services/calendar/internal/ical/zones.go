package ical

import (
	_ "embed" // for the Windows zone table
	"fmt"
	"strings"
	"sync"
	"time"
)

// windowsZonesData is the Windows-to-IANA table; see the header of the file for its source.
// It is read-only data: NewZones parses it into each Zones.
//
//go:embed windowszones.txt
var windowsZonesData string

// UnknownZoneError says a time zone name could not be resolved. It matches ErrUnknownTimeZone.
type UnknownZoneError struct {
	// Name is the name as given.
	Name string
	// Windows is true when the name looks like a Windows zone name ("... Standard Time") that
	// the table does not map, so the message can say to use an IANA name instead.
	Windows bool
	// Err is the loader's error, if any.
	Err error
}

// Error says what is wrong and what to use instead.
func (e *UnknownZoneError) Error() string {
	switch {
	case e.Windows:
		return fmt.Sprintf("unknown time zone %q: a Windows zone name without an IANA mapping; use an IANA name such as \"Europe/Vienna\"", e.Name)
	case e.Name == "":
		return "unknown time zone: empty name"
	default:
		return fmt.Sprintf("unknown time zone %q: not an IANA zone name such as \"Europe/Vienna\"", e.Name)
	}
}

// Is makes errors.Is(err, ErrUnknownTimeZone) true.
func (e *UnknownZoneError) Is(target error) bool { return target == ErrUnknownTimeZone }

// Unwrap returns the loader's error.
func (e *UnknownZoneError) Unwrap() error { return e.Err }

// Zones resolves the time zone names that clients send: IANA names through the system's tz
// database (time.LoadLocation), and the Windows names that Outlook and Windows clients send
// through the CLDR table. Loaded zones are cached, since time.LoadLocation reads a file each
// time. A Zones is safe for concurrent use.
//
// Hosts without /usr/share/zoneinfo need the tz database linked into the binary (import
// time/tzdata in main).
type Zones struct {
	windows map[string]string // lower-case Windows name → IANA name

	mu    sync.Mutex
	cache map[string]*time.Location
}

// NewZones parses the embedded Windows zone table.
func NewZones() (*Zones, error) {
	windows, err := parseWindowsZones(windowsZonesData)
	if err != nil {
		return nil, fmt.Errorf("ical: windows zone table: %w", err)
	}
	return &Zones{windows: windows, cache: make(map[string]*time.Location)}, nil
}

// parseWindowsZones reads lines of "Windows name<TAB>IANA name".
func parseWindowsZones(data string) (map[string]string, error) {
	m := make(map[string]string)
	for i, line := range strings.Split(data, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		win, iana, ok := strings.Cut(line, "\t")
		if !ok || win == "" || iana == "" || strings.Contains(iana, "\t") {
			return nil, fmt.Errorf("line %d: want \"Windows name<TAB>IANA name\", got %q", i+1, line)
		}
		key := strings.ToLower(win)
		if _, dup := m[key]; dup {
			return nil, fmt.Errorf("line %d: %q listed twice", i+1, win)
		}
		m[key] = iana
	}
	return m, nil
}

// Load resolves name, an IANA zone name or a Windows zone name (matched case-insensitively),
// to a location whose String() is the IANA name. It rejects the empty name and "Local", which
// time.LoadLocation would turn into UTC and the server's own zone.
func (z *Zones) Load(name string) (*time.Location, error) {
	name = strings.TrimSpace(name)
	if name == "" || name == "Local" {
		return nil, &UnknownZoneError{Name: name}
	}
	z.mu.Lock()
	loc, ok := z.cache[name]
	z.mu.Unlock()
	if ok {
		return loc, nil
	}

	// IANA first, so "UTC" (also a Windows name) stays UTC rather than Etc/UTC. The cache holds
	// only names that resolve, an IANA name as written (the zone database's names are
	// case-sensitive) and a Windows name in lower case, so it cannot grow beyond the zones that
	// exist: every spelling of "W. Europe Standard Time" a client sends shares one entry.
	key := name
	loc, err := time.LoadLocation(name)
	if err != nil {
		key = strings.ToLower(name)
		iana, windows := z.windows[key]
		if !windows {
			return nil, &UnknownZoneError{Name: name, Windows: looksWindows(name), Err: err}
		}
		z.mu.Lock()
		loc, ok = z.cache[key]
		z.mu.Unlock()
		if ok {
			return loc, nil
		}
		if loc, err = time.LoadLocation(iana); err != nil {
			return nil, &UnknownZoneError{Name: name, Windows: true, Err: err}
		}
	}
	z.mu.Lock()
	z.cache[key] = loc
	z.mu.Unlock()
	return loc, nil
}

// looksWindows reports whether name has the shape of a Windows zone name: IANA names never
// contain spaces, Windows names nearly always do ("W. Europe Standard Time").
func looksWindows(name string) bool {
	return strings.Contains(name, " ") || strings.HasSuffix(name, "Standard Time")
}
