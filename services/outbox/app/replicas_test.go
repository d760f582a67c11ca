package app_test

import (
	"bytes"
	"fmt"
	"net/mail"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/internal/testkit/poll"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// TestTwoReplicasSendEachEmailOnce: two outbox replicas on one Redis share the due mail; 10,000
// emails reach the relay exactly once each (one copy per Message-ID), whichever replica was asked
// to submit and whichever claimed.
func TestTwoReplicasSendEachEmailOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 10,000 emails")
	}
	e := startEnv(t)
	second := e.replica()
	const n = 10_000
	// Due together in a moment, so both dispatchers find a full backlog.
	at := timestamppb.New(time.Now().Add(3 * time.Second))
	var wg sync.WaitGroup
	errc := make(chan error, 20)
	for w := range 20 {
		client := e.outbox
		if w%2 == 1 {
			client = second
		}
		wg.Go(func() {
			ctx := e.as("eva", nil)
			for i := w; i < n; i += 20 {
				req := email("eva@kanzlei.example", "client@example.com", fmt.Sprintf("Nummer %d", i))
				req.SendAt = at
				if _, err := client.SubmitEmail(ctx, req); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	e.sink.WaitForMessages(t, n, 2*time.Minute)
	time.Sleep(200 * time.Millisecond) // a duplicate would arrive by now
	msgs := e.sink.Messages()
	seen := make(map[string]int, n)
	for _, m := range msgs {
		h, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		seen[h.Header.Get("Message-Id")]++
	}
	if len(msgs) != n || len(seen) != n {
		dups := 0
		for _, c := range seen {
			if c > 1 {
				dups++
			}
		}
		t.Fatalf("%d messages, %d distinct Message-IDs, %d sent more than once; want %d each once", len(msgs), len(seen), dups, n)
	}
	a, b := sent(t, e.metrics[0]), sent(t, e.metrics[1])
	if a == 0 || b == 0 || a+b != n {
		t.Errorf("replicas sent %v and %v; want both to share the %d", a, b, n)
	}
}

// TestConnectorCreatedOnOneReplicaIsFoundByTheOther: mail for a connector created a moment ago
// through one replica is sent whichever replica claims it, not failed as "unknown connector"
// by a replica that has not reloaded its connectors yet.
func TestConnectorCreatedOnOneReplicaIsFoundByTheOther(t *testing.T) {
	e := startEnv(t)
	second := e.replica()
	// Once it answers, the second replica has loaded its connectors (Run loads before serving).
	poll.Eventually(t, "the second replica to serve", func() bool {
		_, err := second.ListConnectors(e.admin(), &outboxv1.ListConnectorsRequest{})
		return err == nil
	})
	host, port := e.sinkHostPort()
	if _, err := e.outbox.CreateConnector(e.admin(), &outboxv1.CreateConnectorRequest{Connector: &outboxv1.Connector{
		ConnectorId: "neu", Host: host, Port: port, TlsMode: outboxv1.TlsMode_TLS_MODE_NONE,
	}}); err != nil {
		t.Fatal(err)
	}
	eva := e.as("eva", nil)
	var ids []string
	for i := range 40 {
		req := email("eva@kanzlei.example", "client@example.com", fmt.Sprintf("Neu %d", i))
		req.ConnectorId = "neu"
		ids = append(ids, e.submit(eva, req).GetEmailId())
	}
	for _, id := range ids {
		e.waitStatus(eva, id, outboxv1.EmailStatus_EMAIL_STATUS_SENT)
	}
}
