// Package tcpproxy is a TCP proxy for tests on loopback that stands between a client and a
// server (an SMTP relay, typically) and misbehaves on demand: it answers slowly, hangs, or cuts
// every connection. Fault tests use it to give a real server the network faults production
// meets, without changing the server or the client under test.
//
//	p := tcpproxy.Start(t, sink.Addr())
//	p.SetDelay(600 * time.Millisecond) // a slow relay: every reply arrives 600 ms late
//	p.Hang(true)                       // a relay that stops answering, connections kept open
//	p.CutAll()                         // every connection dropped at once
//	p.Refuse(true)                     // the server unreachable: cut, and no connection gets through
//	p.HoldRequests(true)               // the clients' bytes stop short of the server
//
// SetDelay and Hang act on the server-to-client direction: a client's commands reach the server
// at once, and its replies are what the client waits for, which is how a slow or hung relay looks
// from the sender's side. HoldRequests acts on the other direction, for a test that needs a
// request in flight that has not reached the server (a publish a crash must lose).
package tcpproxy

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// queueLen bounds the chunks read from a server and not yet written to its client; a server that
// writes more than that while the proxy holds its replies is not read further (TCP flow control
// then slows it down, as a congested network would).
const queueLen = 1024

// chunkSize is the largest piece read at once.
const chunkSize = 32 << 10

// Proxy forwards connections from its listener on 127.0.0.1 to one target address. Its methods
// are safe for concurrent use.
type Proxy struct {
	ln     net.Listener
	target string
	done   chan struct{} // closed by Close

	mu       sync.Mutex
	delay    time.Duration
	hung     bool
	refusing bool
	holdUp   bool          // HoldRequests: the clients' bytes are kept in their pair's held
	resume   chan struct{} // closed and replaced when Hang(false) lets held bytes go
	conns    map[*pair]struct{}
	accepted int
	closed   bool
	wg       sync.WaitGroup // the accept loop and every pair's goroutines
}

// pair is one proxied connection: the client's and the one the proxy opened to the target.
type pair struct {
	client, server net.Conn
	once           sync.Once
	gone           chan struct{} // closed by close, so a writer holding bytes stops waiting
	// held are the client's bytes not yet forwarded (HoldRequests), and flushing is set while
	// HoldRequests(false) forwards them, so that newer bytes queue behind; both under Proxy.mu.
	held     []byte
	flushing bool
}

func (c *pair) close() {
	c.once.Do(func() {
		_ = c.client.Close()
		_ = c.server.Close()
		close(c.gone)
	})
}

// drop closes c and forgets it.
func (p *Proxy) drop(c *pair) {
	c.close()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// Start listens on 127.0.0.1 with a free port, forwards every accepted connection to target, and
// closes everything at tb's cleanup.
func Start(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("tcpproxy: listen: %v", err)
	}
	p := &Proxy{ln: ln, target: target, done: make(chan struct{}), resume: make(chan struct{}), conns: map[*pair]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	tb.Cleanup(p.Close)
	return p
}

// Addr is the host:port clients dial instead of the target's.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetDelay makes every chunk the server sends reach its client d after the proxy read it, as over
// a slow link or from a slow relay; the delay is a latency, not a throughput limit (chunks read
// together arrive together, in order). It applies to chunks read from now on; 0 forwards at once.
func (p *Proxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = d
}

// Hang(true) stops forwarding the server's bytes to every client while keeping all connections,
// and accepting new ones, open: the client sees a relay that does not answer, and times out on its
// own. Hang(false) lets the held bytes go, in order, and forwarding continues.
func (p *Proxy) Hang(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hung && !on {
		close(p.resume)
		p.resume = make(chan struct{})
	}
	p.hung = on
}

// CutAll closes every current connection on both sides at once, as a network failure or a relay
// restart would; bytes held or delayed are dropped. New connections are accepted as before.
func (p *Proxy) CutAll() {
	p.mu.Lock()
	conns := make([]*pair, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
}

// Refuse(true) cuts every connection and from then on closes each new one as soon as it is
// accepted, before anything reaches the target: the server looks down or cut off by the network,
// and a client's reconnects fail until Refuse(false), after which connections are forwarded as
// before.
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	p.refusing = on
	p.mu.Unlock()
	if on {
		p.CutAll()
	}
}

// HoldRequests(true) stops forwarding the clients' bytes to the server: the proxy reads them (so
// a client's writes succeed, as into a network that has lost its way) and keeps them, per
// connection and in order; replies go on as before. HoldRequests(false) forwards what was held,
// in order, and forwarding continues. A client that closes its connection, or dies, while bytes
// of it are held loses them with the connection: they never reach the server, as packets lost
// with a link. The held bytes are not bounded: hold for a moment of a test, not for megabytes.
func (p *Proxy) HoldRequests(on bool) {
	p.mu.Lock()
	p.holdUp = on
	var flush []*pair
	if !on {
		for c := range p.conns {
			if len(c.held) > 0 && !c.flushing {
				c.flushing = true
				flush = append(flush, c)
			}
		}
	}
	p.mu.Unlock()
	for _, c := range flush {
		p.flush(c)
	}
}

// flush forwards c's held bytes, and those that arrive meanwhile, until none is left.
func (p *Proxy) flush(c *pair) {
	for {
		p.mu.Lock()
		b := c.held
		c.held = nil
		if len(b) == 0 || p.holdUp {
			c.flushing = false
			if len(b) > 0 { // held again meanwhile: keep them
				c.held = b
			}
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		if _, err := c.server.Write(b); err != nil {
			p.mu.Lock()
			c.flushing = false
			p.mu.Unlock()
			p.drop(c)
			return
		}
	}
}

// HeldRequests returns a copy of the bytes held now (HoldRequests), one slice per connection that
// has any, so a test can wait until a client's request is in flight.
func (p *Proxy) HeldRequests() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out [][]byte
	for c := range p.conns {
		if len(c.held) > 0 {
			out = append(out, append([]byte(nil), c.held...))
		}
	}
	return out
}

// Conns is the number of connections open now, so a test can wait until a client has connected
// (to a hung relay, say) before it goes on.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Accepted is the number of connections accepted so far, open or closed.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// Close stops listening, cuts every connection and waits until the proxy's goroutines are gone.
// It is idempotent and registered with tb.Cleanup by Start.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	close(p.done)
	_ = p.ln.Close()
	p.CutAll()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.mu.Lock()
		refusing := p.refusing
		p.mu.Unlock()
		if refusing {
			_ = client.Close()
			continue
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close() // the target is down: the client sees a refused relay
			continue
		}
		c := &pair{client: client, server: server, gone: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.close()
			return
		}
		if p.refusing { // Refuse(true) came while the target was dialled
			p.mu.Unlock()
			c.close()
			continue
		}
		p.conns[c] = struct{}{}
		p.accepted++
		p.wg.Add(3)
		p.mu.Unlock()
		go p.upstream(c)
		chunks := make(chan chunk, queueLen)
		go p.read(c, chunks)
		go p.write(c, chunks)
	}
}

// chunk is a piece of the server's reply and the time it may reach the client.
type chunk struct {
	data []byte
	due  time.Time
}

// upstream copies the client's bytes to the server as they come, or queues them in c.held while
// requests are held (or held bytes are still being forwarded, so nothing overtakes them). When
// the client closes, the pair is dropped, with any bytes still held.
func (p *Proxy) upstream(c *pair) {
	defer p.wg.Done()
	defer p.drop(c)
	buf := make([]byte, chunkSize)
	for {
		n, err := c.client.Read(buf)
		if n > 0 {
			p.mu.Lock()
			queue := p.holdUp || c.flushing || len(c.held) > 0
			if queue {
				c.held = append(c.held, buf[:n]...)
			}
			p.mu.Unlock()
			if !queue {
				if _, werr := c.server.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return // the client closed, or the pair was cut
		}
	}
}

// read queues the server's bytes, each chunk stamped with the time it may be forwarded.
func (p *Proxy) read(c *pair, chunks chan<- chunk) {
	defer p.wg.Done()
	defer close(chunks)
	for {
		buf := make([]byte, chunkSize)
		n, err := c.server.Read(buf)
		if n > 0 {
			p.mu.Lock()
			due := time.Now().Add(p.delay)
			p.mu.Unlock()
			select {
			case chunks <- chunk{data: buf[:n], due: due}:
			case <-c.gone:
				return
			case <-p.done:
				return
			}
		}
		if err != nil {
			return // the server closed (the writer closes the client after the queue) or was cut
		}
	}
}

// write forwards queued chunks to the client when they are due and the proxy does not hang, then
// closes the pair once the server has closed and everything it sent was forwarded.
func (p *Proxy) write(c *pair, chunks <-chan chunk) {
	defer p.wg.Done()
	defer p.drop(c)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for ch := range chunks {
		for {
			if err := p.waitUntil(c, timer, ch.due); err != nil {
				return
			}
			// A hang may start while a chunk waits for its time: check after the wait.
			p.mu.Lock()
			hung, resume := p.hung, p.resume
			p.mu.Unlock()
			if !hung {
				break
			}
			select {
			case <-resume:
			case <-c.gone:
				return
			case <-p.done:
				return
			}
		}
		if _, err := c.client.Write(ch.data); err != nil {
			return
		}
	}
}

var errClosed = errors.New("tcpproxy: closed")

// waitUntil blocks until t, or until the pair or the proxy closes.
func (p *Proxy) waitUntil(c *pair, timer *time.Timer, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return nil
	}
	timer.Reset(d)
	select {
	case <-timer.C:
		return nil
	case <-c.gone:
		return errClosed
	case <-p.done:
		return errClosed
	}
}
