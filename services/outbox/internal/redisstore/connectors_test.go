package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/services/outbox/internal/connector"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
	"github.com/postamt/postamt/services/outbox/internal/smtp"
)

// connectorContract is every connector-store behaviour; each runs on a fresh store.
var connectorContract = []struct {
	name string
	run  func(t *testing.T, s *redisstore.Connectors)
}{
	{"CreateGet", testConnectorCreateGet},
	{"List", testConnectorList},
	{"Update", testConnectorUpdate},
	{"ConcurrentUpdates", testConnectorConcurrentUpdates},
	{"Delete", testConnectorDelete},
	{"SetEnabled", testConnectorSetEnabled},
	{"Generation", testConnectorGeneration},
	{"TenantIsolation", testConnectorTenantIsolation},
}

// TestConnectorStore runs the contract on a plain server each.
func TestConnectorStore(t *testing.T) {
	for _, c := range connectorContract {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.run(t, redisstore.NewConnectors(redistest.Start(t).Client(t)))
		})
	}
}

// TestConnectorStoreCluster runs the contract on a one-node Redis Cluster, so every script is
// checked against the cluster's rule that a script's keys share one slot. One cluster serves
// all cases, emptied between them: a cluster takes seconds to form.
func TestConnectorStoreCluster(t *testing.T) {
	rdb := redistest.Start(t, redistest.WithCluster()).ClusterClient(t)
	for _, c := range connectorContract {
		err := rdb.ForEachMaster(context.Background(), func(ctx context.Context, n *redis.Client) error { return n.FlushAll(ctx).Err() })
		if err != nil {
			t.Fatal(err)
		}
		t.Run(c.name, func(t *testing.T) { c.run(t, redisstore.NewConnectors(rdb)) })
	}
}

// relay is a valid connector of tenant with every field set, so a round trip shows each one.
func relay(t *testing.T, tenant, id string) connector.Connector {
	t.Helper()
	c := connector.Connector{
		Tenant: tenant, ID: id, DisplayName: "Relay " + id, Host: "smtp.example.com", Port: 587,
		TLS: smtp.TLSStartTLS, Auth: smtp.AuthLogin, Username: "kanzlei", SecretRef: "file:/run/secrets/smtp",
		RetryPattern: []time.Duration{time.Minute, 5 * time.Minute, time.Hour}, MaxAttempts: 6, Enabled: true,
		ResendUnknown: true, MaxMessageBytes: 10 << 20, PoolSize: 2,
		Limits:       connector.Limits{MessagesPerSecond: 5, MessagesPerMinute: 30, RecipientsPerMinute: 300, RecipientsPerDay: 10_000},
		SenderLimits: connector.Limits{RecipientsPerDay: 2_000, CalendarDay: true, Zone: "Europe/Vienna"},
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

func connNames(cs []connector.Connector) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Tenant + "/" + c.ID
	}
	return out
}

func generation(t *testing.T, s *redisstore.Connectors) int64 {
	t.Helper()
	g, err := s.Generation(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func testConnectorCreateGet(t *testing.T, s *redisstore.Connectors) {
	ctx := context.Background()
	before := time.Now()
	want := relay(t, "kanzlei", "relay")
	got, err := s.Create(ctx, want)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 1 || got.Created.Before(before.Add(-time.Millisecond)) || !got.Created.Equal(got.Updated) {
		t.Errorf("created: version %d, created %v, updated %v", got.Version, got.Created, got.Updated)
	}
	want.Version, want.Created, want.Updated = got.Version, got.Created, got.Updated
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Create = %+v, want %+v", got, want)
	}
	read, err := s.Get(ctx, "kanzlei", "relay")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(read, want) {
		t.Errorf("Get = %+v, want %+v", read, want)
	}

	t.Run("duplicate id", func(t *testing.T) {
		if _, err := s.Create(ctx, relay(t, "kanzlei", "relay")); !errors.Is(err, errs.ErrAlreadyExists) {
			t.Errorf("second Create = %v, want AlreadyExists", err)
		}
		if c, _ := s.Get(ctx, "kanzlei", "relay"); c.Version != 1 {
			t.Errorf("the failed create changed the stored connector: %+v", c)
		}
	})
	t.Run("unknown id", func(t *testing.T) {
		if _, err := s.Get(ctx, "kanzlei", "nope"); !errors.Is(err, errs.ErrNotFound) {
			t.Errorf("Get = %v, want NotFound", err)
		}
	})
	t.Run("defaults survive", func(t *testing.T) {
		c := connector.Connector{Tenant: "kanzlei", ID: "plain", Host: "10.0.0.25", Port: 25, TLS: smtp.TLSNone, Auth: smtp.AuthNone}
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Create(ctx, c); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctx, "kanzlei", "plain")
		if err != nil {
			t.Fatal(err)
		}
		if got.RetryPattern != nil || got.ResendUnknown || got.Enabled || got.MaxAttempts != 1 ||
			got.MaxMessageBytes != connector.DefaultMaxMessageBytes || got.PoolSize != connector.DefaultPoolSize {
			t.Errorf("Get = %+v", got)
		}
	})
}

func testConnectorList(t *testing.T, s *redisstore.Connectors) {
	ctx := context.Background()
	for _, id := range []string{"g", "b", "e", "a", "f", "c", "d"} {
		if _, err := s.Create(ctx, relay(t, "kanzlei", id)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Create(ctx, relay(t, "other", "a0")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		size  int
		pages [][]string
	}{
		{"pages of 3", 3, [][]string{{"a", "b", "c"}, {"d", "e", "f"}, {"g"}}},
		{"exact fit", 7, [][]string{{"a", "b", "c", "d", "e", "f", "g"}}},
		{"pages of 1", 1, [][]string{{"a"}, {"b"}, {"c"}, {"d"}, {"e"}, {"f"}, {"g"}}},
		{"default size", 0, [][]string{{"a", "b", "c", "d", "e", "f", "g"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token := ""
			for i, want := range tt.pages {
				page, next, err := s.List(ctx, "kanzlei", tt.size, token)
				if err != nil {
					t.Fatal(err)
				}
				got := make([]string, len(page))
				for j, c := range page {
					got[j] = c.ID
				}
				if !slices.Equal(got, want) {
					t.Errorf("page %d = %v, want %v", i, got, want)
				}
				if last := i == len(tt.pages)-1; last != (next == "") {
					t.Errorf("page %d: next token %q", i, next)
				}
				token = next
			}
		})
	}
	t.Run("a connector deleted between pages", func(t *testing.T) {
		page, next, err := s.List(ctx, "kanzlei", 2, "")
		if err != nil || len(page) != 2 {
			t.Fatal(page, err)
		}
		if err := s.Delete(ctx, "kanzlei", "b"); err != nil {
			t.Fatal(err)
		}
		page, _, err = s.List(ctx, "kanzlei", 2, next)
		if err != nil || len(page) != 2 || page[0].ID != "c" {
			t.Errorf("next page = %v, %v; want c and d", connNames(page), err)
		}
	})
	t.Run("All", func(t *testing.T) {
		all, err := s.All(ctx, "kanzlei")
		if err != nil {
			t.Fatal(err)
		}
		if got, want := connNames(all), []string{"kanzlei/a", "kanzlei/c", "kanzlei/d", "kanzlei/e", "kanzlei/f", "kanzlei/g"}; !slices.Equal(got, want) {
			t.Errorf("All = %v, want %v", got, want)
		}
		none, err := s.All(ctx, "nobody")
		if err != nil || len(none) != 0 {
			t.Errorf("All of an unknown tenant = %v, %v", none, err)
		}
	})
	t.Run("ListAll", func(t *testing.T) {
		all, err := s.ListAll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := connNames(all), []string{"kanzlei/a", "kanzlei/c", "kanzlei/d", "kanzlei/e", "kanzlei/f", "kanzlei/g", "other/a0"}; !slices.Equal(got, want) {
			t.Errorf("ListAll = %v, want %v", got, want)
		}
	})
}

func testConnectorUpdate(t *testing.T, s *redisstore.Connectors) {
	ctx := context.Background()
	created, err := s.Create(ctx, relay(t, "kanzlei", "relay"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetEnabled(ctx, "kanzlei", "relay", false); err != nil { // version 2
		t.Fatal(err)
	}
	change := relay(t, "kanzlei", "relay")
	change.Host, change.Port, change.Enabled = "mail.example.net", 465, true
	change.Created = time.Time{} // the store keeps the original

	got, err := s.Update(ctx, "kanzlei", change, 2)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 3 || got.Host != "mail.example.net" || got.Port != 465 {
		t.Errorf("Update = %+v", got)
	}
	if got.Enabled {
		t.Error("Update enabled the connector; only SetEnabled may")
	}
	if !got.Created.Equal(created.Created) || got.Updated.Before(created.Updated) {
		t.Errorf("times: created %v (was %v), updated %v", got.Created, created.Created, got.Updated)
	}
	if read, _ := s.Get(ctx, "kanzlei", "relay"); !reflect.DeepEqual(read, got) {
		t.Errorf("Get = %+v, want %+v", read, got)
	}

	tests := []struct {
		name     string
		id       string
		expected int64
		is       error
		version  int64 // stored afterwards
	}{
		{"stale version", "relay", 2, errs.ErrAborted, 3},
		{"future version", "relay", 9, errs.ErrAborted, 3},
		{"current version", "relay", 3, nil, 4},
		{"any version", "relay", 0, nil, 5},
		{"unknown id", "nope", 0, errs.ErrNotFound, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := relay(t, "kanzlei", tt.id)
			_, err := s.Update(ctx, "kanzlei", c, tt.expected)
			if (tt.is == nil) != (err == nil) || (tt.is != nil && !errors.Is(err, tt.is)) {
				t.Errorf("Update = %v, want %v", err, tt.is)
			}
			if read, _ := s.Get(ctx, "kanzlei", "relay"); read.Version != tt.version {
				t.Errorf("stored version %d, want %d", read.Version, tt.version)
			}
		})
	}
	if _, err := s.Get(ctx, "kanzlei", "nope"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("an update of an unknown id created it: %v", err)
	}
}

// testConnectorConcurrentUpdates: writers that race each get a version of their own or a
// retryable Aborted, and no write is lost (the stored version counts the successful ones).
func testConnectorConcurrentUpdates(t *testing.T, s *redisstore.Connectors) {
	ctx := context.Background()
	if _, err := s.Create(ctx, relay(t, "kanzlei", "relay")); err != nil {
		t.Fatal(err)
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		versions = map[int64]bool{}
	)
	for i := range 8 {
		c := relay(t, "kanzlei", "relay")
		c.DisplayName = fmt.Sprintf("writer %d", i)
		wg.Go(func() {
			got, err := s.Update(ctx, "kanzlei", c, 0)
			if errors.Is(err, errs.ErrAborted) {
				return
			}
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if versions[got.Version] {
				t.Errorf("version %d given twice", got.Version)
			}
			versions[got.Version] = true
		})
	}
	wg.Wait()
	read, err := s.Get(ctx, "kanzlei", "relay")
	if err != nil {
		t.Fatal(err)
	}
	if read.Version != 1+int64(len(versions)) || len(versions) == 0 {
		t.Errorf("stored version %d after %d successful updates", read.Version, len(versions))
	}
}

func testConnectorDelete(t *testing.T, s *redisstore.Connectors) {
	ctx := context.Background()
	for _, id := range []string{"a", "b"} {
		if _, err := s.Create(ctx, relay(t, "kanzlei", id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(ctx, "kanzlei", "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "kanzlei", "a"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("Get after Delete = %v, want NotFound", err)
	}
	if err := s.Delete(ctx, "kanzlei", "a"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("second Delete = %v, want NotFound", err)
	}
	page, _, err := s.List(ctx, "kanzlei", 10, "")
	if err != nil || !slices.Equal(connNames(page), []string{"kanzlei/b"}) {
		t.Errorf("List = %v, %v", connNames(page), err)
	}
	// The id is free again, and starts over at version 1.
	c, err := s.Create(ctx, relay(t, "kanzlei", "a"))
	if err != nil || c.Version != 1 {
		t.Errorf("Create after Delete = %+v, %v", c, err)
	}
}

func testConnectorSetEnabled(t *testing.T, s *redisstore.Connectors) {
	ctx := context.Background()
	if _, err := s.Create(ctx, relay(t, "kanzlei", "relay")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		enabled bool
		version int64
		bumps   bool // the generation moves
	}{
		{"disable", false, 2, true},
		{"disable again: nothing to write", false, 2, false},
		{"enable", true, 3, true},
		{"enable again: nothing to write", true, 3, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gen := generation(t, s)
			got, err := s.SetEnabled(ctx, "kanzlei", "relay", tt.enabled)
			if err != nil {
				t.Fatal(err)
			}
			if got.Enabled != tt.enabled || got.Version != tt.version {
				t.Errorf("SetEnabled = enabled %v version %d, want %v %d", got.Enabled, got.Version, tt.enabled, tt.version)
			}
			if read, _ := s.Get(ctx, "kanzlei", "relay"); !reflect.DeepEqual(read, got) {
				t.Errorf("Get = %+v, want %+v", read, got)
			}
			if moved := generation(t, s) != gen; moved != tt.bumps {
				t.Errorf("generation moved = %v, want %v", moved, tt.bumps)
			}
		})
	}
	if _, err := s.SetEnabled(ctx, "kanzlei", "nope", true); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("SetEnabled of an unknown id = %v, want NotFound", err)
	}
}

// testConnectorGeneration: every write moves the generation, so other replicas reload; reads
// and refused writes do not, so they do not reload for nothing.
func testConnectorGeneration(t *testing.T, s *redisstore.Connectors) {
	ctx := context.Background()
	if g := generation(t, s); g != 0 {
		t.Fatalf("generation of an empty store = %d, want 0", g)
	}
	steps := []struct {
		name  string
		do    func() error
		bumps bool
	}{
		{"create", func() error { _, err := s.Create(ctx, relay(t, "kanzlei", "relay")); return err }, true},
		{"create in another tenant", func() error { _, err := s.Create(ctx, relay(t, "other", "relay")); return err }, true},
		{"get", func() error { _, err := s.Get(ctx, "kanzlei", "relay"); return err }, false},
		{"list", func() error { _, _, err := s.List(ctx, "kanzlei", 10, ""); return err }, false},
		{"update", func() error { _, err := s.Update(ctx, "kanzlei", relay(t, "kanzlei", "relay"), 0); return err }, true},
		{"disable", func() error { _, err := s.SetEnabled(ctx, "kanzlei", "relay", false); return err }, true},
		{"delete", func() error { return s.Delete(ctx, "kanzlei", "relay") }, true},
		{"refused: duplicate create", func() error {
			if _, err := s.Create(ctx, relay(t, "other", "relay")); !errors.Is(err, errs.ErrAlreadyExists) {
				return fmt.Errorf("create = %v, want AlreadyExists", err)
			}
			return nil
		}, false},
		{"refused: stale version", func() error {
			if _, err := s.Update(ctx, "other", relay(t, "other", "relay"), 7); !errors.Is(err, errs.ErrAborted) {
				return fmt.Errorf("update = %v, want Aborted", err)
			}
			return nil
		}, false},
		{"refused: delete of an unknown id", func() error {
			if err := s.Delete(ctx, "kanzlei", "relay"); !errors.Is(err, errs.ErrNotFound) {
				return fmt.Errorf("delete = %v, want NotFound", err)
			}
			return nil
		}, false},
	}
	for _, st := range steps {
		before := generation(t, s)
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if after := generation(t, s); (after > before) != st.bumps || after < before {
			t.Errorf("%s: generation %d -> %d, want a move: %v", st.name, before, after, st.bumps)
		}
	}
}

// testConnectorTenantIsolation: a tenant cannot see, change or remove another tenant's
// connector, and may use the same id for its own.
func testConnectorTenantIsolation(t *testing.T, s *redisstore.Connectors) {
	ctx := context.Background()
	a, err := s.Create(ctx, relay(t, "tenant-a", "relay"))
	if err != nil {
		t.Fatal(err)
	}
	attempts := []struct {
		name string
		do   func() error
	}{
		{"get", func() error { _, err := s.Get(ctx, "tenant-b", "relay"); return err }},
		{"update", func() error { _, err := s.Update(ctx, "tenant-b", relay(t, "tenant-b", "relay"), 0); return err }},
		{"disable", func() error { _, err := s.SetEnabled(ctx, "tenant-b", "relay", false); return err }},
		{"delete", func() error { return s.Delete(ctx, "tenant-b", "relay") }},
	}
	for _, at := range attempts {
		t.Run(at.name, func(t *testing.T) {
			if err := at.do(); !errors.Is(err, errs.ErrNotFound) {
				t.Errorf("tenant B's %s of A's connector = %v, want NotFound", at.name, err)
			}
		})
	}
	if page, _, err := s.List(ctx, "tenant-b", 10, ""); err != nil || len(page) != 0 {
		t.Errorf("tenant B's list = %v, %v; want empty", connNames(page), err)
	}
	if all, err := s.All(ctx, "tenant-b"); err != nil || len(all) != 0 {
		t.Errorf("tenant B's All = %v, %v; want empty", connNames(all), err)
	}
	// B's own "relay" is a different connector; A's is untouched by everything above.
	b := relay(t, "tenant-b", "relay")
	b.Host = "smtp.tenant-b.example"
	if _, err := s.Create(ctx, b); err != nil {
		t.Fatalf("tenant B's create of its own relay: %v", err)
	}
	gotA, err := s.Get(ctx, "tenant-a", "relay")
	if err != nil || !reflect.DeepEqual(gotA, a) {
		t.Errorf("tenant A's connector = %+v, %v; want %+v", gotA, err, a)
	}
	gotB, err := s.Get(ctx, "tenant-b", "relay")
	if err != nil || gotB.Host != "smtp.tenant-b.example" || gotB.Tenant != "tenant-b" {
		t.Errorf("tenant B's connector = %+v, %v", gotB, err)
	}
}
