package app_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/smtptest"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/app"
)

// scrape reads the text exposition of url: each sample line as its series (name and labels as
// written) and value.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestMetricsNameTheFailingConnector: after a relay refuses mail (550 for one email, 451 for
// another), the outbox's metrics, scraped over HTTP in the exposition format, shows the failures
// under that connector's name, the conversations in its latency histogram, and the failed and
// retrying mail in the status gauges; the healthy default connector shows none of it.
func TestMetricsNameTheFailingConnector(t *testing.T) {
	e := startEnv(t, func(c *app.Config) { c.MetricsInterval = 100 * time.Millisecond })
	// As the ops server serves it (internal/telemetry.OpsServer: promhttp over the registry).
	ops := httptest.NewServer(promhttp.HandlerFor(e.metrics[0], promhttp.HandlerOpts{}))
	t.Cleanup(ops.Close)

	host, port := e.sinkHostPort()
	if _, err := e.outbox.CreateConnector(e.admin(), &outboxv1.CreateConnectorRequest{Connector: &outboxv1.Connector{
		ConnectorId: "abweiser", Host: host, Port: port, TlsMode: outboxv1.TlsMode_TLS_MODE_NONE,
		RetryPattern: []*durationpb.Duration{durationpb.New(time.Hour)}, MaxAttempts: 3,
	}}); err != nil {
		t.Fatal(err)
	}
	eva := e.as("eva", nil)
	e.sink.SetHook(func(env smtptest.Envelope) smtptest.Behavior {
		for _, to := range env.To {
			switch to {
			case "hard@example.com":
				return smtptest.PermFailRcpt
			case "soft@example.com":
				return smtptest.TempFailRcpt
			}
		}
		return smtptest.Accept
	})
	t.Cleanup(func() { e.sink.SetHook(nil) })
	for _, tc := range []struct {
		to   string
		want outboxv1.EmailStatus
	}{
		{"hard@example.com", outboxv1.EmailStatus_EMAIL_STATUS_FAILED},
		{"soft@example.com", outboxv1.EmailStatus_EMAIL_STATUS_PENDING_RETRY},
	} {
		req := email("eva@kanzlei.example", tc.to, "Unterlagen")
		req.ConnectorId = "abweiser"
		e.waitStatus(eva, e.submit(eva, req).GetEmailId(), tc.want)
	}
	ok := e.submit(eva, email("eva@kanzlei.example", "client@example.com", "accepted"))
	e.waitStatus(eva, ok.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_SENT)

	got := scrape(t, ops.URL)
	for series, want := range map[string]float64{
		`postamt_outbox_attempts_total{connector="abweiser",outcome="permanent",tenant="kanzlei"}`: 1,
		`postamt_outbox_attempts_total{connector="abweiser",outcome="temporary",tenant="kanzlei"}`: 1,
		`postamt_outbox_attempts_total{connector="abweiser",outcome="sent",tenant="kanzlei"}`:      0,
		`postamt_outbox_attempts_total{connector="default",outcome="sent",tenant="kanzlei"}`:       1,
		`postamt_outbox_attempts_total{connector="default",outcome="permanent",tenant="kanzlei"}`:  0,
		`postamt_outbox_smtp_conversation_seconds_count{connector="abweiser",tenant="kanzlei"}`:    2,
		`postamt_outbox_smtp_conversation_seconds_count{connector="default",tenant="kanzlei"}`:     1,
	} {
		if v, ok := got[series]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", series, v, ok, want)
		}
	}

	// The gauges are sampled in the background: wait for a sample taken after the failures.
	poll.Eventually(t, "status gauges", func() bool {
		g := scrape(t, ops.URL)
		return g[`postamt_outbox_emails{status="FAILED"}`] == 1 && g[`postamt_outbox_emails{status="PENDING_RETRY"}`] == 1
	})
	g := scrape(t, ops.URL)
	for _, series := range []string{
		`postamt_outbox_due_emails{connector="abweiser",tenant="kanzlei"}`,
		`postamt_outbox_oldest_due_age_seconds{connector="abweiser",tenant="kanzlei"}`,
		`postamt_outbox_sending_emails{connector="abweiser",tenant="kanzlei"}`,
		`postamt_outbox_due_emails{connector="default",tenant="kanzlei"}`,
		`postamt_relay_backlog_entries{service="outbox"}`,
		`postamt_relay_oldest_entry_age_seconds{service="outbox"}`,
	} {
		if _, ok := g[series]; !ok {
			t.Errorf("%s is not exported", series)
		}
	}
	// The retry is an hour away and the failure needs a person: nothing of it is due.
	if v := g[`postamt_outbox_due_emails{connector="abweiser",tenant="kanzlei"}`]; v != 0 {
		t.Errorf("due on abweiser = %v, want 0", v)
	}
}
