package radicaletest_test

import (
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/testkit/radicaletest"
)

// do sends an authenticated request and returns the status code.
func do(t *testing.T, method, url, user, password, body string) int {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(user, password)
	if body != "" {
		req.Header.Set("Content-Type", "text/calendar")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

const event = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//radicaletest//EN\r\nBEGIN:VEVENT\r\n" +
	"UID:e1@test\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260102T100000Z\r\nDTEND:20260102T110000Z\r\n" +
	"SUMMARY:test\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"

func TestStart(t *testing.T) {
	s := radicaletest.Start(t, radicaletest.WithUser("alice", "a-secret"), radicaletest.WithUser("bob", "b-secret"))
	cal := s.CalendarURL("alice", "work")
	tests := []struct {
		name           string
		method, url    string
		user, password string
		body           string
		want           int
	}{
		{"user creates a calendar", "MKCALENDAR", cal, "alice", "a-secret", "", http.StatusCreated},
		{"user puts an event", http.MethodPut, cal + "e1.ics", "alice", "a-secret", event, http.StatusCreated},
		{"user reads it", http.MethodGet, cal + "e1.ics", "alice", "a-secret", "", http.StatusOK},
		{"wrong password", http.MethodGet, cal + "e1.ics", "alice", "wrong", "", http.StatusUnauthorized},
		{"unknown user", http.MethodGet, cal + "e1.ics", "mallory", "a-secret", "", http.StatusUnauthorized},
		{"other user is not the owner", http.MethodGet, cal + "e1.ics", "bob", "b-secret", "", http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := do(t, tt.method, tt.url, tt.user, tt.password, tt.body); got != tt.want {
				t.Errorf("%s %s as %s = %d, want %d", tt.method, tt.url, tt.user, got, tt.want)
			}
		})
	}
}

func TestServersAreIsolated(t *testing.T) {
	a := radicaletest.Start(t, radicaletest.WithUser("alice", "pw"))
	b := radicaletest.Start(t, radicaletest.WithUser("alice", "pw"))
	if a.Addr() == b.Addr() || a.StorageDir() == b.StorageDir() {
		t.Fatalf("servers share %s / %s", a.Addr(), a.StorageDir())
	}
	if got, want := do(t, "MKCALENDAR", a.CalendarURL("alice", "c"), "alice", "pw", ""), http.StatusCreated; got != want {
		t.Fatalf("MKCALENDAR on a = %d, want %d", got, want)
	}
	if got, want := do(t, "PROPFIND", b.CalendarURL("alice", "c"), "alice", "pw", ""), http.StatusNotFound; got != want {
		t.Errorf("PROPFIND of a's calendar on b = %d, want %d", got, want)
	}
}

func TestStopAndRestart(t *testing.T) {
	s := radicaletest.Start(t, radicaletest.WithUser("alice", "pw"))
	addr, cal := s.Addr(), s.CalendarURL("alice", "c")
	if got, want := do(t, "MKCALENDAR", cal, "alice", "pw", ""), http.StatusCreated; got != want {
		t.Fatalf("MKCALENDAR = %d, want %d", got, want)
	}
	if got, want := do(t, http.MethodPut, cal+"e1.ics", "alice", "pw", event), http.StatusCreated; got != want {
		t.Fatalf("PUT = %d, want %d", got, want)
	}

	s.Stop()
	if conn, err := net.Dial("tcp", addr); err == nil {
		conn.Close()
		t.Fatal("connected after Stop, want the port closed")
	}
	s.Stop() // harmless when stopped

	s.Restart(t)
	if got := s.Addr(); got != addr {
		t.Errorf("Addr after Restart = %s, want the same %s", got, addr)
	}
	if got, want := do(t, http.MethodGet, cal+"e1.ics", "alice", "pw", ""), http.StatusOK; got != want {
		t.Errorf("GET of the event after Restart = %d, want %d (storage kept)", got, want)
	}
}

// TestKillAndRestart: a SIGKILLed server is gone at once and comes back on the same port with
// what it had stored.
func TestKillAndRestart(t *testing.T) {
	s := radicaletest.Start(t, radicaletest.WithUser("alice", "pw"))
	addr, cal := s.Addr(), s.CalendarURL("alice", "c")
	if got, want := do(t, "MKCALENDAR", cal, "alice", "pw", ""), http.StatusCreated; got != want {
		t.Fatalf("MKCALENDAR = %d, want %d", got, want)
	}
	if got, want := do(t, http.MethodPut, cal+"e1.ics", "alice", "pw", event), http.StatusCreated; got != want {
		t.Fatalf("PUT = %d, want %d", got, want)
	}
	s.Kill()
	if conn, err := net.Dial("tcp", addr); err == nil {
		conn.Close()
		t.Fatal("connected after Kill, want the port closed")
	}
	s.Kill() // harmless when gone
	s.Restart(t)
	if got, want := do(t, http.MethodGet, cal+"e1.ics", "alice", "pw", ""), http.StatusOK; got != want {
		t.Errorf("GET of the event after Kill and Restart = %d, want %d (storage kept)", got, want)
	}
}
