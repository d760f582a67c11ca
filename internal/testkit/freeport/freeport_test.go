package freeport_test

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/testkit/freeport"
)

// TestPortIsFreeAndOutsideTheEphemeralRange: a port can be bound, and it is below the range
// outgoing connections take their ports from.
func TestPortIsFreeAndOutsideTheEphemeralRange(t *testing.T) {
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		lo, _ = strconv.Atoi(strings.Fields(string(b))[0])
	}
	for range 20 {
		p, err := freeport.Port()
		if err != nil {
			t.Fatal(err)
		}
		if p >= lo || p < 1024 {
			t.Errorf("port %d is not below the ephemeral range starting at %d", p, lo)
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("port %d: %v", p, err)
		}
		_ = l.Close()
	}
}
