// Package logtest holds a log destination a test reads while servers still write to it, so the
// tests that check log lines or printed output share one race-free buffer.
package logtest

import (
	"bytes"
	"sync"
)

// Buffer is an io.Writer that is safe for concurrent writes and reads: a server's goroutines
// write their log to it while the test reads what has arrived.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
