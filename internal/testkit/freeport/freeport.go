// Package freeport picks loopback ports for the servers a test starts and binds later (a
// spawned redis-server, a `postamt serve` process, an address given on a command line).
//
// The usual trick, listening on port 0 and closing, hands out a port from the kernel's ephemeral
// range, the same range every outgoing connection takes its local port from: between the close
// and the server's bind, any connection of the test (to Redis, NATS, a relay) may take that port,
// and the server fails with "address already in use" (seen in CI). Ports below the ephemeral
// range are never given to outgoing connections, so a port picked there, at random and checked
// free, only meets another test that picked the same one.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// span is how many ports below the ephemeral range are drawn from.
const span = 12000

// Port returns a loopback TCP port that was free a moment ago, below the ephemeral range.
func Port() (int, error) {
	lo := ephemeralLow()
	base := max(lo-span, 1024)
	for range 200 {
		p := base + rand.IntN(lo-base)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		_ = l.Close()
		return p, nil
	}
	// Everything tried was taken: fall back to the kernel's choice.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Addr returns 127.0.0.1:PORT with a port from Port, failing tb when none is found.
func Addr(tb testing.TB) string {
	tb.Helper()
	p, err := Port()
	if err != nil {
		tb.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(p)
}

// Addrs returns n distinct addresses from Addr, for a test that starts several servers at once:
// ports drawn at random from one range meet now and then (eleven of them did in CI).
func Addrs(tb testing.TB, n int) []string {
	tb.Helper()
	out := make([]string, 0, n)
	for len(out) < n {
		if a := Addr(tb); !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux), 32768 elsewhere.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) < 1 {
		return 32768
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil || lo <= 1024 {
		return 32768
	}
	return lo
}
