package calendar

import "sync"

// Hub routes wake-ups and replacements to the Connect streams of this process. The store
// publishes both on Redis when it writes; the app's subscriber feeds them in here, so a change
// made through any replica reaches the stream wherever it runs, without polling.
type Hub struct {
	mu      sync.Mutex
	subs    map[string]map[*sub]struct{}
	closing chan struct{}
	once    sync.Once
}

// sub is one stream's mailbox.
type sub struct {
	session string
	wake    chan struct{} // capacity 1: a pending wake-up is enough
	kicked  chan struct{} // closed when another session took over
	once    sync.Once
}

func (s *sub) kick() { s.once.Do(func() { close(s.kicked) }) }

// NewHub returns an empty Hub.
func NewHub() *Hub {
	return &Hub{subs: make(map[string]map[*sub]struct{}), closing: make(chan struct{})}
}

// Shutdown ends every stream of this process with Unavailable, so agents reconnect to another
// replica while this one drains.
func (h *Hub) Shutdown() { h.once.Do(func() { close(h.closing) }) }

func hubKey(tenant, user string) string { return tenant + "\x00" + user }

func (h *Hub) subscribe(tenant, user, session string) *sub {
	s := &sub{session: session, wake: make(chan struct{}, 1), kicked: make(chan struct{})}
	h.mu.Lock()
	defer h.mu.Unlock()
	k := hubKey(tenant, user)
	if h.subs[k] == nil {
		h.subs[k] = make(map[*sub]struct{})
	}
	h.subs[k][s] = struct{}{}
	return s
}

func (h *Hub) unsubscribe(tenant, user string, s *sub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := hubKey(tenant, user)
	delete(h.subs[k], s)
	if len(h.subs[k]) == 0 {
		delete(h.subs, k)
	}
}

// Notify tells the user's streams that deliveries may be waiting.
func (h *Hub) Notify(tenant, user string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs[hubKey(tenant, user)] {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// Kick ends the user's stream of session replaced, which another session took over. It names
// the stream to end, not the one that won: a kick that arrives late, after a still newer
// session connected, must not end the newer one.
func (h *Hub) Kick(tenant, user, replaced string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs[hubKey(tenant, user)] {
		if s.session == replaced {
			s.kick()
		}
	}
}

// Streams counts the streams of this process, for metrics and tests.
func (h *Hub) Streams() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.subs {
		n += len(m)
	}
	return n
}
