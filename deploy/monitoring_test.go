package deploy_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/postamt/postamt/deploy"
)

// update rewrites the generated PrometheusRule from deploy/prometheus/rules.yml.
var update = flag.Bool("update", false, "rewrite k8s/components/monitoring/prometheusrule.yaml from prometheus/rules.yml")

const (
	rulesFile     = "prometheus/rules.yml"
	ruleResource  = "k8s/components/monitoring/prometheusrule.yaml"
	dashboardFile = "grafana/postamt.json"
	operationsDoc = "../docs/operations.md"
)

// ruleHeader opens the generated PrometheusRule.
const ruleHeader = `# GENERATED from deploy/prometheus/rules.yml by ` + "`cd deploy && go test -run TestPrometheusRule -update`" + `;
# edit rules.yml (checked by promtool) and regenerate. The alerts and their runbooks are
# described in docs/operations.md, "Metrics and alerts".
`

func readYAML(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := yaml.UnmarshalStrict(b, &out); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return out
}

// TestPrometheusRule: the operator's PrometheusRule carries exactly the groups of rules.yml,
// the file promtool checks and tests.
func TestPrometheusRule(t *testing.T) {
	rules := readYAML(t, rulesFile)
	if *update {
		obj := map[string]any{
			"apiVersion": "monitoring.coreos.com/v1",
			"kind":       "PrometheusRule",
			"metadata":   map[string]any{"name": "postamt", "labels": map[string]any{"app.kubernetes.io/name": "postamt"}},
			"spec":       map[string]any{"groups": rules["groups"]},
		}
		b, err := yaml.Marshal(obj)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(ruleResource, append([]byte(ruleHeader), b...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	res := readYAML(t, ruleResource)
	if res["apiVersion"] != "monitoring.coreos.com/v1" || res["kind"] != "PrometheusRule" {
		t.Fatalf("%s is %v %v, want a monitoring.coreos.com/v1 PrometheusRule", ruleResource, res["apiVersion"], res["kind"])
	}
	spec, _ := res["spec"].(map[string]any)
	if !reflect.DeepEqual(spec["groups"], rules["groups"]) {
		t.Errorf("%s differs from %s: run `cd deploy && go test -run TestPrometheusRule -update`", ruleResource, rulesFile)
	}
}

// alerts lists the alerting rules of rules.yml.
func alerts(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	groups, _ := readYAML(t, rulesFile)["groups"].([]any)
	for _, g := range groups {
		rs, _ := g.(map[string]any)["rules"].([]any)
		for _, r := range rs {
			if m := r.(map[string]any); m["alert"] != nil {
				out = append(out, m)
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("no alerts in " + rulesFile)
	}
	return out
}

// slug is GitHub's anchor of a Markdown heading.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		}
	}
	return b.String()
}

// TestAlertsHaveRunbooks: every alert has a severity, a summary and a runbook_url whose anchor
// is a heading of docs/operations.md.
func TestAlertsHaveRunbooks(t *testing.T) {
	doc, err := os.ReadFile(operationsDoc)
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(line, "#") {
			anchors[slug(strings.TrimLeft(line, "#"))] = true
		}
	}
	for _, a := range alerts(t) {
		name := fmt.Sprint(a["alert"])
		labels, _ := a["labels"].(map[string]any)
		ann, _ := a["annotations"].(map[string]any)
		if sev := labels["severity"]; sev != "page" && sev != "warning" {
			t.Errorf("%s: severity %v, want page or warning", name, sev)
		}
		if ann["summary"] == nil || ann["description"] == nil {
			t.Errorf("%s: no summary or description", name)
		}
		url, _ := ann["runbook_url"].(string)
		_, anchor, ok := strings.Cut(url, "/docs/operations.md#")
		if !ok || !anchors[anchor] {
			t.Errorf("%s: runbook_url %q does not point to a heading of docs/operations.md", name, url)
		}
	}
}

// TestMonitoringComponent: the optional component renders on top of each overlay: a
// PodMonitor that selects every service's pods on their ops port, and the PrometheusRule, in
// the overlay's namespace; the rest of the overlay still passes its checks.
func TestMonitoringComponent(t *testing.T) {
	dirs, err := deploy.Overlays("k8s")
	if err != nil {
		t.Fatal(err)
	}
	abs, err := filepath.Abs("k8s")
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range dirs {
		name := filepath.Base(dir)
		t.Run(name, func(t *testing.T) {
			tmp := t.TempDir()
			// kustomize takes relative paths only: from the temporary directory up to k8s/.
			overlay, err1 := filepath.Rel(tmp, filepath.Join(abs, "overlays", name))
			component, err2 := filepath.Rel(tmp, filepath.Join(abs, "components", "monitoring"))
			if err1 != nil || err2 != nil {
				t.Fatal(err1, err2)
			}
			// The namespace, as the overlay's own would if the component were listed in it.
			k := fmt.Sprintf("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: %s\nresources:\n  - %s\ncomponents:\n  - %s\n",
				overlays[name].Namespace, overlay, component)
			if err := os.WriteFile(filepath.Join(tmp, "kustomization.yaml"), []byte(k), 0o644); err != nil {
				t.Fatal(err)
			}
			opts := krusty.MakeDefaultOptions()
			resMap, err := krusty.MakeKustomizer(opts).Run(filesys.MakeFsOnDisk(), tmp)
			if err != nil {
				t.Fatal(err)
			}
			var rest [][]byte
			var monitors, rules []map[string]any
			for _, r := range resMap.Resources() {
				b, err := r.AsYAML()
				if err != nil {
					t.Fatal(err)
				}
				switch r.GetKind() {
				case "PodMonitor", "PrometheusRule":
					var m map[string]any
					if err := yaml.Unmarshal(b, &m); err != nil {
						t.Fatal(err)
					}
					if r.GetKind() == "PodMonitor" {
						monitors = append(monitors, m)
					} else {
						rules = append(rules, m)
					}
					if ns := r.GetNamespace(); ns != overlays[name].Namespace {
						t.Errorf("%s/%s in namespace %q, want %q", r.GetKind(), r.GetName(), ns, overlays[name].Namespace)
					}
				default:
					rest = append(rest, b)
				}
			}
			if len(monitors) != 1 || len(rules) != 1 {
				t.Fatalf("%d PodMonitors and %d PrometheusRules, want one each", len(monitors), len(rules))
			}
			m, err := deploy.Decode(bytes.Join(rest, []byte("---\n")))
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range deploy.Check(m, overlays[name]) {
				t.Error(v)
			}
			spec := monitors[0]["spec"].(map[string]any)
			match, _ := spec["selector"].(map[string]any)["matchLabels"].(map[string]any)
			eps, _ := spec["podMetricsEndpoints"].([]any)
			if len(eps) != 1 || eps[0].(map[string]any)["port"] != "ops" {
				t.Fatalf("podMetricsEndpoints %v, want the port ops", eps)
			}
			for _, d := range m.Deployments {
				labels := d.Spec.Template.Labels
				for k, v := range match {
					if labels[k] != v {
						t.Errorf("the PodMonitor does not select Deployment %s (label %s=%v, pod has %q)", d.Name, k, v, labels[k])
					}
				}
				if !slices.ContainsFunc(d.Spec.Template.Spec.Containers[0].Ports, func(p corev1.ContainerPort) bool { return p.Name == "ops" }) {
					t.Errorf("Deployment %s declares no port ops", d.Name)
				}
			}
			for _, s := range m.Services {
				if !strings.HasPrefix(s.Name, "nats") && !strings.HasPrefix(s.Name, "redis") &&
					!slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == "ops" && p.TargetPort.StrVal == "ops" }) {
					t.Errorf("Service %s names no ops port", s.Name)
				}
			}
		})
	}
}

// metricRE finds the series names a query or an alert reads.
var metricRE = regexp.MustCompile(`\b(postamt_[a-z_]+|grpc_server_[a-z_]+)\b`)

// exported collects the metric names the Go code of the suite declares (grep level: a quoted
// name, or a prefix the code concatenates, such as the relay's "postamt_relay_" + name + "_total").
func exported(t *testing.T) string {
	t.Helper()
	var all strings.Builder
	for _, root := range []string{"../internal", "../services", "../gateway"} {
		fsys := os.DirFS(root)
		err := fs.WalkDir(fsys, ".", func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			b, err := fs.ReadFile(fsys, path)
			if err != nil {
				return err
			}
			all.Write(b)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return all.String()
}

// declared reports whether the code declares the series name (a histogram's _bucket, _count and
// _sum come from its name; the relay's counters are "postamt_relay_" + name + "_total").
func declared(code, name string) bool {
	base := name
	for _, suffix := range []string{"_bucket", "_count", "_sum"} {
		base = strings.TrimSuffix(base, suffix)
	}
	if strings.Contains(code, `"`+base+`"`) {
		return true
	}
	if rest, ok := strings.CutPrefix(base, "postamt_relay_"); ok {
		if short, ok := strings.CutSuffix(rest, "_total"); ok {
			return strings.Contains(code, `"postamt_relay_"+name+"_total"`) && strings.Contains(code, `desc("`+short+`"`)
		}
	}
	return false
}

// TestAlertMetricsExist: every Postamt series an alert reads is declared in the code.
func TestAlertMetricsExist(t *testing.T) {
	code := exported(t)
	for _, a := range alerts(t) {
		for _, name := range metricRE.FindAllString(fmt.Sprint(a["expr"]), -1) {
			if !declared(code, name) {
				t.Errorf("alert %v reads %s, which no Go code declares", a["alert"], name)
			}
		}
	}
}

// TestDashboard: the Grafana dashboard is valid JSON with panels, every panel has a query, and
// every Postamt series it queries is declared in the code.
func TestDashboard(t *testing.T) {
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if dash.Title == "" || dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("%s: title %q, uid %q, %d panels", dashboardFile, dash.Title, dash.UID, len(dash.Panels))
	}
	code := exported(t)
	queried := map[string]bool{}
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			for _, name := range metricRE.FindAllString(q.Expr, -1) {
				queried[name] = true
				if !declared(code, name) {
					t.Errorf("panel %q queries %s, which no Go code declares", p.Title, name)
				}
			}
		}
	}
	// The series an on-call engineer acts on are all on the dashboard.
	for _, name := range []string{
		"postamt_outbox_attempts_total", "postamt_outbox_smtp_conversation_seconds_bucket", "postamt_outbox_due_emails",
		"postamt_outbox_oldest_due_age_seconds", "postamt_outbox_sending_emails", "postamt_outbox_emails",
		"postamt_relay_backlog_entries", "postamt_relay_oldest_entry_age_seconds", "postamt_consumer_pending_messages",
		"postamt_consumer_ack_pending_messages", "postamt_calendar_push_pending_entries", "postamt_calendar_push_attempts_total",
	} {
		if !queried[name] {
			t.Errorf("the dashboard shows no %s", name)
		}
	}
}
