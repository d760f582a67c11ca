package tcpproxy_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/tcpproxy"
)

// echo runs a line echo server on loopback for the test and returns its address.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			})
		}
	})
	return ln.Addr().String()
}

// client dials addr and returns the connection and a line reader on it.
func client(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, bufio.NewReader(c)
}

// roundTrip writes line and reads the echo, failing after timeout.
func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, line string, timeout time.Duration) (string, error) {
	t.Helper()
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	got, err := r.ReadString('\n')
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		return "", err
	}
	return got[:len(got)-1], nil
}

func TestForwards(t *testing.T) {
	p := tcpproxy.Start(t, echo(t))
	c, r := client(t, p.Addr())
	for _, line := range []string{"EHLO a", "MAIL FROM:<a@b>", "QUIT"} {
		got, err := roundTrip(t, c, r, line, 5*time.Second)
		if err != nil || got != line {
			t.Fatalf("round trip of %q: got %q, %v", line, got, err)
		}
	}
}

// TestDelay: a reply arrives no sooner than the delay after it was sent (a lower bound only: the
// machine may be slower, never faster), and delayed replies keep their order.
func TestDelay(t *testing.T) {
	const d = 150 * time.Millisecond
	p := tcpproxy.Start(t, echo(t))
	p.SetDelay(d)
	c, r := client(t, p.Addr())
	start := time.Now()
	for _, line := range []string{"one", "two", "three"} {
		if _, err := io.WriteString(c, line+"\n"); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"one", "two", "three"} {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := r.ReadString('\n')
		if err != nil || got != want+"\n" {
			t.Fatalf("got %q, %v; want %q", got, err, want)
		}
	}
	if took := time.Since(start); took < d {
		t.Errorf("three pipelined lines came back after %s; want at least the delay %s", took, d)
	}
	p.SetDelay(0)
	if got, err := roundTrip(t, c, r, "four", 5*time.Second); err != nil || got != "four" {
		t.Fatalf("after SetDelay(0): got %q, %v", got, err)
	}
}

// TestHang: while hung nothing reaches the client but the connection stays open; released, the
// held reply arrives in order, and new connections are accepted during the hang.
func TestHang(t *testing.T) {
	p := tcpproxy.Start(t, echo(t))
	c, r := client(t, p.Addr())
	if got, err := roundTrip(t, c, r, "before", 5*time.Second); err != nil || got != "before" {
		t.Fatalf("got %q, %v", got, err)
	}
	p.Hang(true)
	_, err := roundTrip(t, c, r, "held", 200*time.Millisecond)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read while hung: %v; want a timeout (no bytes, connection open)", err)
	}
	c2, r2 := client(t, p.Addr())
	poll.Eventually(t, "the second connection", func() bool { return p.Conns() == 2 })
	if _, err := io.WriteString(c2, "second\n"); err != nil {
		t.Fatal(err)
	}
	p.Hang(false)
	for _, tc := range []struct {
		r    *bufio.Reader
		c    net.Conn
		want string
	}{{r, c, "held"}, {r2, c2, "second"}} {
		_ = tc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := tc.r.ReadString('\n')
		if err != nil || got != tc.want+"\n" {
			t.Fatalf("after release: got %q, %v; want %q", got, err, tc.want)
		}
	}
}

// TestCutAll: every open connection ends (the client reads EOF or a reset), new ones still work.
func TestCutAll(t *testing.T) {
	p := tcpproxy.Start(t, echo(t))
	var conns []net.Conn
	var readers []*bufio.Reader
	for range 3 {
		c, r := client(t, p.Addr())
		if _, err := roundTrip(t, c, r, "hi", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		conns, readers = append(conns, c), append(readers, r)
	}
	p.Hang(true) // a cut must also end connections whose replies are held
	p.CutAll()
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := readers[i].ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connection %d after CutAll: %v; want it closed", i, err)
		}
	}
	poll.Eventually(t, "no open connections", func() bool { return p.Conns() == 0 })
	p.Hang(false)
	c, r := client(t, p.Addr())
	if got, err := roundTrip(t, c, r, "again", 5*time.Second); err != nil || got != "again" {
		t.Fatalf("new connection after CutAll: got %q, %v", got, err)
	}
	if got := p.Accepted(); got != 4 {
		t.Errorf("Accepted() = %d, want 4", got)
	}
}

func TestRefuse(t *testing.T) {
	p := tcpproxy.Start(t, echo(t))
	c, r := client(t, p.Addr())
	if _, err := roundTrip(t, c, r, "hi", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Refuse(true)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection after Refuse(true): %v; want it closed", err)
	}
	// A new connection is accepted by the kernel but closed at once: nothing is echoed.
	c2, r2 := client(t, p.Addr())
	_, _ = io.WriteString(c2, "refused\n")
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := r2.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("new connection while refusing: read %q, %v; want it closed", got, err)
	}
	poll.Eventually(t, "no open connections", func() bool { return p.Conns() == 0 })
	p.Refuse(false)
	c3, r3 := client(t, p.Addr())
	if got, err := roundTrip(t, c3, r3, "back", 5*time.Second); err != nil || got != "back" {
		t.Fatalf("new connection after Refuse(false): got %q, %v", got, err)
	}
	if got := p.Accepted(); got != 2 {
		t.Errorf("Accepted() = %d, want 2 (the refused connection is not counted)", got)
	}
}

// TestControlsAreSafeForConcurrentUse runs the controls against traffic (meaningful with -race).
func TestControlsAreSafeForConcurrentUse(t *testing.T) {
	p := tcpproxy.Start(t, echo(t))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			p.SetDelay(time.Duration(i%3) * time.Millisecond)
			p.Hang(i%2 == 0)
			p.HoldRequests(i%4 == 1)
			_ = p.HeldRequests()
			if i%7 == 0 {
				p.Refuse(i%14 == 0)
			}
			if i%10 == 0 {
				p.CutAll()
			}
			_ = p.Conns()
		}
	})
	for range 20 {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(c, "x\n")
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, _ = bufio.NewReader(c).ReadString('\n')
		_ = c.Close()
	}
	close(stop)
	wg.Wait()
	p.Refuse(false)
	p.Hang(false)
	p.HoldRequests(false)
	p.CutAll()
	poll.Eventually(t, "every connection closed", func() bool { return p.Conns() == 0 })
}

// TestHoldRequests: while requests are held the server gets nothing and the client's bytes are
// visible in HeldRequests; released, they reach the server in order, ahead of newer ones. A
// client that closes while its bytes are held loses them: they never reach the server.
func TestHoldRequests(t *testing.T) {
	p := tcpproxy.Start(t, echo(t))
	c, r := client(t, p.Addr())
	if got, err := roundTrip(t, c, r, "before", 5*time.Second); err != nil || got != "before" {
		t.Fatalf("got %q, %v", got, err)
	}
	p.HoldRequests(true)
	if _, err := roundTrip(t, c, r, "held", 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read while requests are held: %v; want a timeout (nothing reached the server)", err)
	}
	poll.Eventually(t, "the request held", func() bool {
		h := p.HeldRequests()
		return len(h) == 1 && string(h[0]) == "held\n"
	})

	// A second client's request is held too, and lost when it closes.
	lost, _ := client(t, p.Addr())
	poll.Eventually(t, "the second connection", func() bool { return p.Conns() == 2 })
	if _, err := io.WriteString(lost, "lost\n"); err != nil {
		t.Fatal(err)
	}
	poll.Eventually(t, "both requests held", func() bool { return len(p.HeldRequests()) == 2 })
	_ = lost.Close()
	poll.Eventually(t, "the closed client's connection dropped", func() bool { return p.Conns() == 1 })

	p.HoldRequests(false)
	if _, err := io.WriteString(c, "after\n"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"held", "after"} {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := r.ReadString('\n')
		if err != nil || got != want+"\n" {
			t.Fatalf("after release: got %q, %v; want %q", got, err, want)
		}
	}
	if h := p.HeldRequests(); len(h) != 0 {
		t.Errorf("HeldRequests after release: %q, want none", h)
	}
}
