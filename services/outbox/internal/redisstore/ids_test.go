package redisstore_test

import (
	"encoding/base32"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

// TestNewID: ids are 16 bytes of lower-case base32, canonical (they decode and encode back to
// themselves), and with an idempotency key they land in the key's partition, at any count.
func TestNewID(t *testing.T) {
	enc := base32.StdEncoding.WithPadding(base32.NoPadding)
	for _, n := range []int{16, 17, 256, 1000, 1024} {
		l := redisstore.New(nil, time.Hour, n)
		seen := map[string]bool{}
		for i := range 300 {
			key := ""
			if i%4 != 0 {
				key = fmt.Sprintf("crm-%d", i)
			}
			id := l.NewID("kanzlei", key)
			b, err := enc.DecodeString(strings.ToUpper(id))
			if err != nil || len(b) != 16 || strings.ToLower(enc.EncodeToString(b)) != id {
				t.Fatalf("n=%d: id %q is not 16 bytes of canonical base32 (%v)", n, id, err)
			}
			if !l.IDForKey(id, "kanzlei", key) {
				t.Fatalf("n=%d: id %q is not in the partition of key %q", n, id, key)
			}
			if seen[id] {
				t.Fatalf("n=%d: id %q drawn twice", n, id)
			}
			seen[id] = true
		}
	}
}

func BenchmarkNewIDWithKey(b *testing.B) {
	for _, n := range []int{16, 256, 1024} {
		l := redisstore.New(nil, time.Hour, n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for i := range b.N {
				l.NewID("kanzlei", fmt.Sprintf("crm-%d", i))
			}
		})
	}
}
