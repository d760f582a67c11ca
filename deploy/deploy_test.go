package deploy_test

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/postamt/postamt/deploy"
)

// overlays are what each overlay expects beyond the common rules.
var overlays = map[string]deploy.Rules{
	"dev": {Namespace: "postamt-dev"},
	"prod": {
		Namespace:        "postamt",
		PinnedImages:     true,
		HighAvailability: true,
		External: []string{
			"Secret/postamt-redis", "ConfigMap/postamt-jwks", "Secret/outbox-smtp",
			"Secret/outbox-signing-key", "Secret/tracker-signing-key", "Secret/calendar-signing-key",
		},
	},
}

func render(t *testing.T, dir string) *deploy.Manifest {
	t.Helper()
	m, err := deploy.Render(dir)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestOverlays(t *testing.T) {
	dirs, err := deploy.Overlays("k8s")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range dirs {
		names = append(names, filepath.Base(d))
	}
	if want := []string{"dev", "prod"}; !slices.Equal(names, want) {
		t.Fatalf("overlays = %v, want %v (add new ones to the table in this test)", names, want)
	}
	for _, dir := range dirs {
		name := filepath.Base(dir)
		t.Run(name, func(t *testing.T) {
			m := render(t, dir)
			for _, v := range deploy.Check(m, overlays[name]) {
				t.Error(v)
			}
		})
	}
}

// TestOverlaySpecifics checks what differs between the overlays on purpose.
func TestOverlaySpecifics(t *testing.T) {
	dev := render(t, "k8s/overlays/dev")
	prod := render(t, "k8s/overlays/prod")
	t.Run("dev runs one replica of each service", func(t *testing.T) {
		for _, h := range dev.HPAs {
			if got := *h.Spec.MinReplicas; got != 1 || h.Spec.MaxReplicas != 1 {
				t.Errorf("HPA %s: min %d max %d, want 1 and 1", h.Name, got, h.Spec.MaxReplicas)
			}
		}
	})
	t.Run("prod runs at least two replicas of each service", func(t *testing.T) {
		for _, h := range prod.HPAs {
			if got := *h.Spec.MinReplicas; got < 2 {
				t.Errorf("HPA %s: min %d, want at least 2", h.Name, got)
			}
		}
	})
	t.Run("prod runs a three-server NATS cluster", func(t *testing.T) {
		for _, s := range prod.StatefulSets {
			if s.Name == "nats" && (s.Spec.Replicas == nil || *s.Spec.Replicas != 3) {
				t.Errorf("nats replicas = %v, want 3", s.Spec.Replicas)
			}
		}
	})
	t.Run("dev tokens are HS256, prod tokens are checked against the JWKS", func(t *testing.T) {
		for _, s := range deploy.Services {
			devEnv, prodEnv := envNames(dev, s), envNames(prod, s)
			if !slices.Contains(devEnv, "AUTH_HS256_SECRET") {
				t.Errorf("dev %s: no AUTH_HS256_SECRET", s)
			}
			if slices.Contains(prodEnv, "AUTH_HS256_SECRET") {
				t.Errorf("prod %s: AUTH_HS256_SECRET is set", s)
			}
			d := prod.Deployment(s)
			if got := prod.Env(&d.Spec.Template.Spec.Containers[0])["AUTH_JWKS_FILE"]; got == "" {
				t.Errorf("prod %s: AUTH_JWKS_FILE is empty", s)
			}
		}
	})
	t.Run("prod services that call others sign with their own key", func(t *testing.T) {
		for _, s := range []string{"outbox", "tracker", "calendar"} {
			if !slices.Contains(envNames(prod, s), "AUTH_SIGNING_KEY_FILE") {
				t.Errorf("prod %s: no AUTH_SIGNING_KEY_FILE", s)
			}
		}
	})
}

func statefulSet(m *deploy.Manifest, name string) *appsv1.StatefulSet {
	for _, s := range m.StatefulSets {
		if s.Name == name {
			return s
		}
	}
	panic("no StatefulSet " + name)
}

func envNames(m *deploy.Manifest, service string) []string {
	d := m.Deployment(service)
	if d == nil {
		return nil
	}
	var names []string
	for _, e := range d.Spec.Template.Spec.Containers[0].Env {
		names = append(names, e.Name)
	}
	return names
}

// TestCheckFinds breaks a good manifest in one way at a time and expects the rule that guards it
// to say so, so that a check that never fails cannot pass for one that holds.
func TestCheckFinds(t *testing.T) {
	rules := overlays["prod"]
	tests := []struct {
		name   string
		rule   deploy.Rule
		mutate func(m *deploy.Manifest)
	}{
		{"a Service selecting no pods", deploy.RuleSelector, func(m *deploy.Manifest) {
			m.Services[0].Spec.Selector = map[string]string{"app.kubernetes.io/name": "nobody"}
		}},
		{"a Service port no pod declares", deploy.RuleSelector, func(m *deploy.Manifest) {
			m.Services[0].Spec.Ports[0].TargetPort = intstr.FromString("nope")
		}},
		{"an HTTP readiness probe", deploy.RuleProbe, func(m *deploy.Manifest) {
			p := m.Deployment("outbox").Spec.Template.Spec.Containers[0].ReadinessProbe
			p.GRPC = nil
			p.HTTPGet = &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("ops")}
		}},
		{"readiness on the empty service name", deploy.RuleProbe, func(m *deploy.Manifest) {
			m.Deployment("mailbox").Spec.Template.Spec.Containers[0].ReadinessProbe.GRPC.Service = ptr.To("")
		}},
		{"a probe on an undeclared port", deploy.RuleProbe, func(m *deploy.Manifest) {
			m.Deployment("tracker").Spec.Template.Spec.Containers[0].LivenessProbe.GRPC.Port = 9999
		}},
		{"GRPC_ADDR on another port", deploy.RulePorts, func(m *deploy.Manifest) {
			m.ConfigMaps[slices.IndexFunc(m.ConfigMaps, func(c *corev1.ConfigMap) bool {
				return strings.HasPrefix(c.Name, "postamt-common")
			})].Data["GRPC_ADDR"] = ":7000"
		}},
		{"a writable root filesystem", deploy.RuleSecurity, func(m *deploy.Manifest) {
			m.Deployment("gateway").Spec.Template.Spec.Containers[0].SecurityContext.ReadOnlyRootFilesystem = ptr.To(false)
		}},
		{"a mounted service-account token", deploy.RuleSecurity, func(m *deploy.Manifest) {
			statefulSet(m, "nats").Spec.Template.Spec.AutomountServiceAccountToken = nil
		}},
		{"a capability kept", deploy.RuleSecurity, func(m *deploy.Manifest) {
			statefulSet(m, "redis").Spec.Template.Spec.Containers[0].SecurityContext.Capabilities.Drop = []corev1.Capability{"NET_RAW"}
		}},
		{"outbox grace shorter than an SMTP send", deploy.RuleGrace, func(m *deploy.Manifest) {
			m.Deployment("outbox").Spec.Template.Spec.TerminationGracePeriodSeconds = ptr.To[int64](60)
		}},
		{"no preStop", deploy.RuleGrace, func(m *deploy.Manifest) {
			m.Deployment("calendar").Spec.Template.Spec.Containers[0].Lifecycle = nil
		}},
		{"a latest image", deploy.RuleImage, func(m *deploy.Manifest) {
			m.Deployment("mailbox").Spec.Template.Spec.Containers[0].Image = "ghcr.io/postamt/postamt:latest"
		}},
		{"a floating tag", deploy.RuleImage, func(m *deploy.Manifest) {
			statefulSet(m, "nats").Spec.Template.Spec.Containers[0].Image = "nats:2-alpine"
		}},
		{"no default deny", deploy.RuleDefaultDeny, func(m *deploy.Manifest) {
			m.NetworkPolicies = slices.DeleteFunc(m.NetworkPolicies, func(p *networkingv1.NetworkPolicy) bool { return p.Name == "default-deny" })
		}},
		{"outbox cut off from mailbox", deploy.RuleFlow, func(m *deploy.Manifest) {
			np := m.NetworkPolicies[slices.IndexFunc(m.NetworkPolicies, func(p *networkingv1.NetworkPolicy) bool { return p.Name == "outbox" })]
			np.Spec.Egress = np.Spec.Egress[1:]
		}},
		{"mailbox open to every pod", deploy.RuleFlow, func(m *deploy.Manifest) {
			np := m.NetworkPolicies[slices.IndexFunc(m.NetworkPolicies, func(p *networkingv1.NetworkPolicy) bool { return p.Name == "mailbox" })]
			np.Spec.Ingress[0].From = nil
		}},
		{"a PDB selecting nothing", deploy.RuleDisruption, func(m *deploy.Manifest) {
			m.PDBs[0].Spec.Selector.MatchLabels = map[string]string{"app.kubernetes.io/name": "nobody"}
		}},
		{"an HPA aiming at nothing", deploy.RuleAutoscale, func(m *deploy.Manifest) {
			m.HPAs[0].Spec.ScaleTargetRef.Name = "nobody"
		}},
		{"replicas beside an HPA", deploy.RuleAutoscale, func(m *deploy.Manifest) {
			m.Deployment("outbox").Spec.Replicas = ptr.To[int32](2)
		}},
		{"no memory limit", deploy.RuleResources, func(m *deploy.Manifest) {
			m.Deployment("mailbox").Spec.Template.Spec.Containers[0].Resources.Limits = nil
		}},
		{"a Secret nobody creates", deploy.RuleReference, func(m *deploy.Manifest) {
			c := &m.Deployment("mailbox").Spec.Template.Spec.Containers[0]
			c.EnvFrom = append(c.EnvFrom, corev1.EnvFromSource{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "typo"}}})
		}},
		{"a namespace without the restricted profile", deploy.RuleNamespace, func(m *deploy.Manifest) {
			delete(m.Namespaces[0].Labels, "pod-security.kubernetes.io/enforce")
		}},
		{"a service missing its headless Service", deploy.RuleComplete, func(m *deploy.Manifest) {
			m.Services = slices.DeleteFunc(m.Services, func(s *corev1.Service) bool { return s.Name == "tracker-headless" })
		}},
		{"NATS without fsync on every write", deploy.RuleStore, func(m *deploy.Manifest) {
			for _, c := range m.ConfigMaps {
				if conf, ok := c.Data["nats.conf"]; ok {
					c.Data["nats.conf"] = strings.ReplaceAll(conf, "sync_interval: always", "sync_interval: 2m")
				}
			}
		}},
		{"Redis with a password in the manifest", deploy.RuleStore, func(m *deploy.Manifest) {
			statefulSet(m, "redis").Spec.Template.Spec.Containers[0].Args = []string{"/etc/redis/redis.conf", "--requirepass", "hunter2"}
		}},
		{"Redis Cluster nodes without masterauth", deploy.RuleStore, func(m *deploy.Manifest) {
			c := &statefulSet(m, "redis").Spec.Template.Spec.Containers[0]
			i := slices.Index(c.Args, "--masterauth")
			c.Args = slices.Delete(c.Args, i, i+2)
		}},
		{"Redis Cluster nodes announcing no stable name", deploy.RuleStore, func(m *deploy.Manifest) {
			c := &statefulSet(m, "redis").Spec.Template.Spec.Containers[0]
			i := slices.Index(c.Args, "--cluster-announce-hostname")
			c.Args = slices.Delete(c.Args, i, i+2)
		}},
		{"Redis Cluster names unpublished before ready", deploy.RuleStore, func(m *deploy.Manifest) {
			m.Services[slices.IndexFunc(m.Services, func(s *corev1.Service) bool { return s.Name == "redis-headless" })].Spec.PublishNotReadyAddresses = false
		}},
		{"a standalone REDIS_URL for the Redis Cluster", deploy.RuleStore, func(m *deploy.Manifest) {
			addEnv(m, "tracker", "REDIS_URL", "redis://:$(REDIS_PASSWORD)@redis-0.redis-headless:6379/0")
		}},
		{"replica acks from a single Redis", deploy.RuleStore, func(m *deploy.Manifest) {
			c := &statefulSet(m, "redis").Spec.Template.Spec.Containers[0]
			c.Ports = c.Ports[:1]
		}},
		{"the Redis Cluster's budget lets two go", deploy.RuleHA, func(m *deploy.Manifest) {
			for _, p := range m.PDBs {
				if p.Name == "redis" {
					p.Spec.MaxUnavailable = ptr.To(intstr.FromInt32(2))
				}
			}
		}},
		{"NATS without a budget", deploy.RuleHA, func(m *deploy.Manifest) {
			m.PDBs = slices.DeleteFunc(m.PDBs, func(p *policyv1.PodDisruptionBudget) bool { return p.Name == "nats" })
		}},
		{"Redis nodes may share a node", deploy.RuleHA, func(m *deploy.Manifest) {
			statefulSet(m, "redis").Spec.Template.Spec.Affinity = nil
		}},
		{"NATS anti-affinity only preferred", deploy.RuleHA, func(m *deploy.Manifest) {
			a := statefulSet(m, "nats").Spec.Template.Spec.Affinity.PodAntiAffinity
			a.PreferredDuringSchedulingIgnoredDuringExecution = []corev1.WeightedPodAffinityTerm{{Weight: 100, PodAffinityTerm: a.RequiredDuringSchedulingIgnoredDuringExecution[0]}}
			a.RequiredDuringSchedulingIgnoredDuringExecution = nil
		}},
		{"Redis not spread over zones", deploy.RuleHA, func(m *deploy.Manifest) {
			statefulSet(m, "redis").Spec.Template.Spec.TopologySpreadConstraints = nil
		}},
		{"Redis on no volume", deploy.RuleHA, func(m *deploy.Manifest) {
			statefulSet(m, "redis").Spec.VolumeClaimTemplates = nil
		}},
		{"one NATS server", deploy.RuleHA, func(m *deploy.Manifest) {
			statefulSet(m, "nats").Spec.Replicas = ptr.To[int32](1)
		}},
		{"Redis without readiness", deploy.RuleHA, func(m *deploy.Manifest) {
			statefulSet(m, "redis").Spec.Template.Spec.Containers[0].ReadinessProbe = nil
		}},
		{"the Redis Cluster's bus open to the services", deploy.RuleFlow, func(m *deploy.Manifest) {
			in := &policy(m, "redis").Spec.Ingress[0]
			in.Ports = append(in.Ports, networkingv1.NetworkPolicyPort{Port: ptr.To(intstr.FromString("cluster-bus"))})
		}},
		{"the Redis Cluster's bus closed between its nodes", deploy.RuleFlow, func(m *deploy.Manifest) {
			np := policy(m, "redis")
			np.Spec.Egress[0].Ports = np.Spec.Egress[0].Ports[:1]
		}},
		{"the cluster init Job running as root", deploy.RuleSecurity, func(m *deploy.Manifest) {
			m.Jobs[0].Spec.Template.Spec.Containers[0].SecurityContext.RunAsNonRoot = ptr.To(false)
		}},
		{"the cluster init Job's image floating", deploy.RuleImage, func(m *deploy.Manifest) {
			m.Jobs[0].Spec.Template.Spec.Containers[0].Image = "redis:8-alpine"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := render(t, "k8s/overlays/prod")
			tt.mutate(m)
			var found []deploy.Rule
			for _, v := range deploy.Check(m, rules) {
				found = append(found, v.Rule)
			}
			if !slices.Contains(found, tt.rule) {
				t.Errorf("Check found %v, want a %s violation", found, tt.rule)
			}
		})
	}
}

// TestDecodeIsStrict: the manifests cannot carry a misspelt or unknown field, which kubectl
// apply without strict validation would drop silently.
func TestDecodeIsStrict(t *testing.T) {
	tests := []struct {
		name string
		doc  string
	}{
		{"unknown field", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {selectr: {a: b}}\n"},
		{"wrong case", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {Selector: {a: b}}\n"},
		{"duplicate key", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {type: ClusterIP}\nspec: {type: ClusterIP}\n"},
		{"unknown kind", "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := deploy.Decode([]byte(tt.doc)); err == nil {
				t.Error("Decode accepted it")
			}
		})
	}
	t.Run("a good document", func(t *testing.T) {
		m, err := deploy.Decode([]byte("---\napiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {selector: {a: b}}\n---\n"))
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Services) != 1 {
			t.Fatalf("decoded %d services, want 1", len(m.Services))
		}
	})
}

// TestViolationIsError keeps Violation usable with errors.Join and friends.
func TestViolationIsError(t *testing.T) {
	var err error = deploy.Violation{Rule: deploy.RuleImage, Object: "Deployment/x", Msg: "unpinned"}
	var v deploy.Violation
	if !errors.As(errors.Join(err), &v) || v.Rule != deploy.RuleImage {
		t.Fatalf("errors.As did not find the Violation in %v", err)
	}
}

// policy returns the rendered NetworkPolicy called name.
func policy(m *deploy.Manifest, name string) *networkingv1.NetworkPolicy {
	i := slices.IndexFunc(m.NetworkPolicies, func(p *networkingv1.NetworkPolicy) bool { return p.Name == name })
	if i < 0 {
		panic("no NetworkPolicy " + name)
	}
	return m.NetworkPolicies[i]
}

// configMap returns the rendered ConfigMap whose generated name starts with prefix.
func configMap(m *deploy.Manifest, prefix string) *corev1.ConfigMap {
	i := slices.IndexFunc(m.ConfigMaps, func(c *corev1.ConfigMap) bool { return strings.HasPrefix(c.Name, prefix+"-") })
	if i < 0 {
		panic("no ConfigMap " + prefix)
	}
	return m.ConfigMaps[i]
}

func addEnv(m *deploy.Manifest, service, name, value string) {
	c := &m.Deployment(service).Spec.Template.Spec.Containers[0]
	c.Env = append(c.Env, corev1.EnvVar{Name: name, Value: value})
}

// TestDials: the addresses the checks derive the flows from are the ones the manifests
// configure, for every overlay: each service's clients (the *_ADDR variables), Redis and NATS for
// the services that keep state, nothing of either for the gateway.
func TestDials(t *testing.T) {
	common := []string{
		"calendar CALENDAR_MAILBOX_ADDR mailbox-headless:9090",
		"calendar NATS_URL nats:4222",
		"gateway GATEWAY_CALENDAR_ADDR calendar-headless:9090",
		"gateway GATEWAY_MAILBOX_ADDR mailbox-headless:9090",
		"gateway GATEWAY_OUTBOX_ADDR outbox-headless:9090",
		"gateway GATEWAY_TRACKER_ADDR tracker-headless:9090",
		"mailbox NATS_URL nats:4222",
		"outbox NATS_URL nats:4222",
		"outbox OUTBOX_MAILBOX_ADDR mailbox-headless:9090",
		"outbox OUTBOX_TRACKER_ADDR tracker-headless:9090",
		"tracker NATS_URL nats:4222",
		"tracker TRACKER_MAILBOX_ADDR mailbox-headless:9090",
	}
	redis := map[string][]string{
		// One Redis (its Service).
		"dev": {"redis:6379"},
		// The Redis Cluster's three seeds, by their stable names.
		"prod": {"redis-0.redis-headless:6379", "redis-1.redis-headless:6379", "redis-2.redis-headless:6379"},
	}
	topology := map[string]string{"dev": "", "prod": deploy.TopologyCluster}
	for _, overlay := range []string{"dev", "prod"} {
		t.Run(overlay, func(t *testing.T) {
			want := slices.Clone(common)
			for _, s := range []string{"calendar", "mailbox", "outbox", "tracker"} {
				for _, a := range redis[overlay] {
					want = append(want, s+" REDIS_URL "+a)
				}
			}
			slices.Sort(want)
			var got []string
			for _, d := range render(t, "k8s/overlays/"+overlay).Dials() {
				if d.Err != nil || d.Local {
					t.Errorf("%s %s = %s: err %v, local %v", d.Service, d.Var, d.Address, d.Err, d.Local)
				}
				if d.Var == "REDIS_URL" && d.Topology != topology[overlay] {
					t.Errorf("%s %s = %s: topology %q, want %q", d.Service, d.Var, d.Address, d.Topology, topology[overlay])
				}
				if strings.Contains(d.Address, "$(") {
					t.Errorf("%s %s: address %s shows a variable reference", d.Service, d.Var, d.Address)
				}
				got = append(got, fmt.Sprintf("%s %s %s:%d", d.Service, d.Var, d.Host, d.Port))
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Errorf("Dials =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// TestParseRedisTopologies: the URL forms of REDIS_URL for a Redis Cluster and a Sentinel set
// name every server they list (the host and each addr=), with the scheme's default port, and
// nothing of the password.
func TestParseRedisTopologies(t *testing.T) {
	tests := []struct {
		url      string
		topology string
		want     []string // host:port of each Dial
		err      bool
	}{
		{"redis://:pw@redis:6379/0", "", []string{"redis:6379"}, false},
		{"rediss://redis", "", []string{"redis:6379"}, false},
		{"redis+cluster://:pw@redis-0.redis-headless:6379?addr=redis-1.redis-headless:6379&addr=redis-2.redis-headless", deploy.TopologyCluster,
			[]string{"redis-0.redis-headless:6379", "redis-1.redis-headless:6379", "redis-2.redis-headless:6379"}, false},
		{"rediss+cluster://user:pw@10.0.0.1?addr=[2001:db8::1]:7000", deploy.TopologyCluster, []string{"10.0.0.1:6379", "2001:db8::1:7000"}, false},
		{"redis+sentinel://app:pw@s1:26379/0?master_name=postamt&addr=s2&addr=s3:26380", deploy.TopologySentinel,
			[]string{"s1:26379", "s2:26379", "s3:26380"}, false},
		{"rediss+sentinel://s1/0?master_name=postamt", deploy.TopologySentinel, []string{"s1:26379"}, false},
		{"redis+sentinel://s1:26379/0?addr=s2", deploy.TopologySentinel, nil, true}, // no master_name
		{"redis+cluster://:pw@seed:6379?addr=", deploy.TopologyCluster, []string{"seed:6379"}, true},
		{"redis+cluster://:pw@seed:6379?addr=s2:notaport", deploy.TopologyCluster, []string{"seed:6379", "s2:0"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			m, err := deploy.Decode([]byte(`apiVersion: apps/v1
kind: Deployment
metadata: {name: mailbox}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: mailbox}}
  template:
    metadata: {labels: {app.kubernetes.io/name: mailbox}}
    spec:
      containers:
        - name: mailbox
          env:
            - {name: REDIS_URL, value: "` + tt.url + `"}
`))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			var errs int
			for _, d := range m.Dials() {
				if d.Topology != tt.topology {
					t.Errorf("%s: topology %q, want %q", d.Address, d.Topology, tt.topology)
				}
				if strings.Contains(d.Address, "pw") {
					t.Errorf("address %s shows the password", d.Address)
				}
				if d.Err != nil {
					errs++
				}
				if d.Host != "" || d.Port != 0 {
					got = append(got, fmt.Sprintf("%s:%d", d.Host, d.Port))
				}
			}
			if (errs > 0) != tt.err {
				t.Errorf("errors %d, want error %v", errs, tt.err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("dials %v, want %v", got, tt.want)
			}
		})
	}
}

// TestTargetStatefulPod: a StatefulSet pod's stable name reaches that StatefulSet's pods on a
// container port they declare, in the namespace's short and long forms; an ordinal beyond the
// replicas, another namespace or an undeclared port reaches nothing.
func TestTargetStatefulPod(t *testing.T) {
	m := render(t, "k8s/overlays/prod")
	for _, tt := range []struct {
		host string
		port int32
		ok   bool
	}{
		{"redis-0.redis-headless", 6379, true},
		{"redis-8.redis-headless.postamt", 16379, true},
		{"redis-4.redis-headless.postamt.svc", 6379, true},
		{"redis-2.redis-headless.postamt.svc.cluster.local.", 6379, true},
		{"nats-2.nats-headless", 4222, true},
		{"redis-9.redis-headless", 6379, false},
		{"redis-01.redis-headless", 6379, false},
		{"redis-0.redis-headless.elsewhere", 6379, false},
		{"redis-0.redis", 6379, false}, // not the governing Service
		{"redis-0.redis-headless", 6380, false},
		{"redis-0.redis-headless.postamt.cluster", 6379, false},
	} {
		to, port, ok := m.Target("postamt", tt.host, tt.port)
		if ok != tt.ok {
			t.Errorf("Target(%s:%d) ok = %v, want %v", tt.host, tt.port, ok, tt.ok)
			continue
		}
		if ok && (port != tt.port || to.Labels["app.kubernetes.io/name"] != strings.SplitN(tt.host, "-", 2)[0]) {
			t.Errorf("Target(%s:%d) = %v port %d", tt.host, tt.port, to.Labels, port)
		}
	}
}

// TestFlowsFromConfiguration changes the configuration or the policies of a good manifest and
// expects exactly the flow and address violations the change causes: an address the policies
// refuse on either side, a rule no address needs on either side, an address the service does not
// read or that names nothing the manifest renders.
func TestFlowsFromConfiguration(t *testing.T) {
	type found struct {
		rule   deploy.Rule
		object string
	}
	tests := []struct {
		name   string
		mutate func(m *deploy.Manifest)
		want   []found
	}{
		{"the real manifest", func(*deploy.Manifest) {}, nil},
		{"outbox → tracker refused by both policies, as before issue 14", func(m *deploy.Manifest) {
			out := policy(m, "outbox")
			out.Spec.Egress[0].To = out.Spec.Egress[0].To[:1] // mailbox only
			tr := policy(m, "tracker")
			tr.Spec.Ingress[0].From = tr.Spec.Ingress[0].From[:1] // gateway only
		}, []found{
			{deploy.RuleFlow, "Deployment/outbox OUTBOX_TRACKER_ADDR"},
			{deploy.RuleFlow, "Deployment/outbox OUTBOX_TRACKER_ADDR"},
		}},
		{"outbox → tracker refused by the tracker's ingress only", func(m *deploy.Manifest) {
			tr := policy(m, "tracker")
			tr.Spec.Ingress[0].From = tr.Spec.Ingress[0].From[:1]
		}, []found{{deploy.RuleFlow, "Deployment/outbox OUTBOX_TRACKER_ADDR"}}},
		{"a new client address without policies", func(m *deploy.Manifest) {
			configMap(m, "tracker-config").Data["TRACKER_CALENDAR_ADDR"] = "calendar-headless.postamt.svc.cluster.local:9090"
		}, []found{
			{deploy.RuleFlow, "Deployment/tracker TRACKER_CALENDAR_ADDR"},
			{deploy.RuleFlow, "Deployment/tracker TRACKER_CALENDAR_ADDR"},
		}},
		{"an address nobody configures any more leaves its rules unused", func(m *deploy.Manifest) {
			delete(configMap(m, "outbox-config").Data, "OUTBOX_TRACKER_ADDR")
		}, []found{
			{deploy.RuleFlow, "NetworkPolicy egress of outbox"},
			{deploy.RuleFlow, "NetworkPolicy ingress of tracker"},
		}},
		{"an empty address turns the client off and needs no flow", func(m *deploy.Manifest) {
			configMap(m, "outbox-config").Data["OUTBOX_TRACKER_ADDR"] = ""
		}, []found{
			{deploy.RuleFlow, "NetworkPolicy egress of outbox"},
			{deploy.RuleFlow, "NetworkPolicy ingress of tracker"},
		}},
		{"the gateway given Redis credentials", func(m *deploy.Manifest) {
			addEnv(m, "gateway", "REDIS_URL", "redis://:$(REDIS_PASSWORD)@redis:6379/0")
		}, []found{{deploy.RuleAddress, "Deployment/gateway REDIS_URL"}}},
		{"the gateway given NATS", func(m *deploy.Manifest) {
			configMap(m, "gateway-config").Data["NATS_URL"] = "nats://nats:4222"
		}, []found{{deploy.RuleAddress, "Deployment/gateway NATS_URL"}}},
		{"the gateway's policy allowing Redis", func(m *deploy.Manifest) {
			gw := policy(m, "gateway")
			gw.Spec.Egress = append(gw.Spec.Egress, policy(m, "postamt-stores").Spec.Egress[0])
		}, []found{{deploy.RuleFlow, "NetworkPolicy egress of gateway"}}},
		{"Redis open to every Postamt pod", func(m *deploy.Manifest) {
			in := &policy(m, "redis").Spec.Ingress[0]
			in.From = append(in.From, networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{deploy.ComponentLabel: deploy.APIComponent},
			}})
		}, []found{{deploy.RuleFlow, "NetworkPolicy ingress of redis"}}},
		{"a second NATS server refused", func(m *deploy.Manifest) {
			configMap(m, "postamt-stores").Data["NATS_URL"] = "nats://nats:4222, nats://nats-headless:6222"
		}, func() []found {
			var f []found
			for _, s := range []string{"calendar", "mailbox", "outbox", "tracker"} {
				f = append(f, found{deploy.RuleFlow, "Deployment/" + s + " NATS_URL"}, found{deploy.RuleFlow, "Deployment/" + s + " NATS_URL"})
			}
			return f
		}()},
		{"an address naming no Service", func(m *deploy.Manifest) {
			configMap(m, "outbox-config").Data["OUTBOX_TRACKER_ADDR"] = "trackr-headless:9090"
		}, []found{
			{deploy.RuleAddress, "Deployment/outbox OUTBOX_TRACKER_ADDR"},
			{deploy.RuleFlow, "NetworkPolicy egress of outbox"},
			{deploy.RuleFlow, "NetworkPolicy ingress of tracker"},
		}},
		{"a listen address taken for a dial address", func(m *deploy.Manifest) {
			configMap(m, "outbox-config").Data["OUTBOX_WEBHOOK_ADDR"] = ":8443"
		}, []found{{deploy.RuleAddress, "Deployment/outbox OUTBOX_WEBHOOK_ADDR"}}},
		{"a cluster seed on a port the nodes do not serve", func(m *deploy.Manifest) {
			addEnv(m, "calendar", "REDIS_URL", "redis+cluster://:$(REDIS_PASSWORD)@redis-0.redis-headless:6379?addr=redis-1.redis-headless:6380")
		}, []found{{deploy.RuleAddress, "Deployment/calendar REDIS_URL"}}},
		{"a cluster seed beyond the StatefulSet's replicas", func(m *deploy.Manifest) {
			addEnv(m, "calendar", "REDIS_URL", "redis+cluster://:$(REDIS_PASSWORD)@redis-9.redis-headless:6379")
		}, []found{
			{deploy.RuleAddress, "Deployment/calendar REDIS_URL"},
			{deploy.RuleFlow, "NetworkPolicy egress of calendar"},
			{deploy.RuleFlow, "NetworkPolicy ingress of redis"},
		}},
		{"the Redis Cluster's bus open to the services", func(m *deploy.Manifest) {
			in := &policy(m, "redis").Spec.Ingress[0]
			in.Ports = append(in.Ports, networkingv1.NetworkPolicyPort{Port: ptr.To(intstr.FromString("cluster-bus"))})
		}, func() []found {
			// redisPeers names the bus port for each workload it admits (the services and the
			// Job); dialFlows finds each as a flow nobody needs.
			var f []found
			for range []string{"calendar", "mailbox", "outbox", "tracker", "redis-cluster-init"} {
				f = append(f, found{deploy.RuleFlow, "NetworkPolicy ingress of redis"}, found{deploy.RuleFlow, "NetworkPolicy ingress of redis port 16379 (cluster-bus)"})
			}
			return f
		}()},
		{"the Redis Cluster's bus open to another namespace", func(m *deploy.Manifest) {
			np := policy(m, "redis")
			np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{
				From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: ptr.To(intstr.FromInt32(16379))}},
			})
		}, func() []found {
			// Every pod of every namespace: the services, the Job and NATS of this one too.
			var f []found
			for range []string{"calendar", "gateway", "mailbox", "outbox", "tracker", "nats", "redis-cluster-init"} {
				f = append(f, found{deploy.RuleFlow, "NetworkPolicy ingress of redis"}, found{deploy.RuleFlow, "NetworkPolicy ingress of redis port 16379 (cluster-bus)"})
			}
			f = append(f,
				found{deploy.RuleFlow, "NetworkPolicy ingress of redis port 16379 (cluster-bus)"}, // another namespace
				found{deploy.RuleFlow, "NetworkPolicy"},                                           // other namespace → redis cluster-bus (Flows)
				found{deploy.RuleFlow, "NetworkPolicy"},                                           // monitoring → redis cluster-bus
				found{deploy.RuleFlow, "NetworkPolicy"},                                           // ingress → redis cluster-bus
			)
			return f
		}()},
		{"loopback and Unix sockets need no policy", func(m *deploy.Manifest) {
			configMap(m, "outbox-config").Data["OTEL_EXPORTER_OTLP_ENDPOINT"] = "127.0.0.1:4317"
			addEnv(m, "mailbox", "REDIS_URL", "unix:///run/redis.sock")
		}, []found{
			{deploy.RuleFlow, "NetworkPolicy egress of mailbox"},
			{deploy.RuleFlow, "NetworkPolicy ingress of redis"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := render(t, "k8s/overlays/prod")
			tt.mutate(m)
			var got []found
			for _, v := range deploy.Check(m, overlays["prod"]) {
				switch v.Rule {
				case deploy.RuleFlow, deploy.RuleAddress:
					got = append(got, found{v.Rule, v.Object})
					t.Log(v)
				default:
					t.Errorf("unexpected %v", v)
				}
			}
			cmp := func(a, b found) int { return strings.Compare(string(a.rule)+a.object, string(b.rule)+b.object) }
			slices.SortFunc(got, cmp)
			slices.SortFunc(tt.want, cmp)
			if !slices.Equal(got, tt.want) {
				t.Errorf("violations %v, want %v", got, tt.want)
			}
		})
	}
}

// toSentinel turns the prod manifest's Redis into a Sentinel set (a sentinel port beside redis
// in each pod, no cluster mode) that every service reaches through a redis+sentinel:// URL, with
// the policies that allows: the sentinels (26379) and the data nodes they name (6379).
func toSentinel(m *deploy.Manifest) {
	cm := configMap(m, "redis-config")
	cm.Data["redis.conf"] = strings.ReplaceAll(cm.Data["redis.conf"], "cluster-enabled yes", "")
	c := &statefulSet(m, "redis").Spec.Template.Spec.Containers[0]
	c.Ports[1] = corev1.ContainerPort{Name: "sentinel", ContainerPort: 26379, Protocol: corev1.ProtocolTCP}
	for _, s := range []string{"calendar", "mailbox", "outbox", "tracker"} {
		addEnv(m, s, "REDIS_URL", "redis+sentinel://:$(REDIS_PASSWORD)@redis-0.redis-headless:26379/0?master_name=postamt&addr=redis-1.redis-headless&addr=redis-2.redis-headless")
	}
	sentinel := networkingv1.NetworkPolicyPort{Port: ptr.To(intstr.FromInt32(26379))}
	st := policy(m, "postamt-stores")
	st.Spec.Egress[0].Ports = append(st.Spec.Egress[0].Ports, sentinel)
	r := policy(m, "redis")
	r.Spec.Ingress[0].Ports = append(r.Spec.Ingress[0].Ports, sentinel)
	r.Spec.Ingress[1].Ports[1] = sentinel
	r.Spec.Egress[0].Ports[1] = sentinel
	// The Job forms a Cluster; a Sentinel set needs none.
	m.Jobs = nil
	r.Spec.Ingress[0].From[0].PodSelector.MatchExpressions[0].Values = []string{"mailbox", "outbox", "tracker", "calendar"}
	m.NetworkPolicies = slices.DeleteFunc(m.NetworkPolicies, func(p *networkingv1.NetworkPolicy) bool { return p.Name == "redis-cluster-init" })
}

// TestSentinelFlows: with a Sentinel URL a service needs the sentinels' port and the data port
// of the pods the sentinels name, and the Sentinel port is for Redis and those services only.
func TestSentinelFlows(t *testing.T) {
	relevant := func(m *deploy.Manifest) []deploy.Violation {
		var out []deploy.Violation
		for _, v := range deploy.Check(m, overlays["prod"]) {
			switch v.Rule {
			case deploy.RuleFlow, deploy.RuleAddress, deploy.RuleStore:
				out = append(out, v)
			}
		}
		return out
	}
	t.Run("allowed", func(t *testing.T) {
		m := render(t, "k8s/overlays/prod")
		toSentinel(m)
		for _, v := range relevant(m) {
			t.Error(v)
		}
	})
	t.Run("the data nodes refused", func(t *testing.T) {
		m := render(t, "k8s/overlays/prod")
		toSentinel(m)
		st := policy(m, "postamt-stores")
		st.Spec.Egress[0].Ports = st.Spec.Egress[0].Ports[1:] // 26379 only
		var got []string
		for _, v := range relevant(m) {
			got = append(got, v.Error())
		}
		if len(got) != 12 || !strings.Contains(got[0], "(port 6379): the egress policy") {
			t.Errorf("violations:\n%s\nwant 3 per service: the data port refused for each sentinel's URL", strings.Join(got, "\n"))
		}
	})
	t.Run("the Sentinel port open to the gateway", func(t *testing.T) {
		m := render(t, "k8s/overlays/prod")
		toSentinel(m)
		in := &policy(m, "redis").Spec.Ingress[0]
		in.From[0].PodSelector.MatchExpressions[0].Values = append(in.From[0].PodSelector.MatchExpressions[0].Values, "gateway")
		var objs []string
		for _, v := range relevant(m) {
			objs = append(objs, v.Object)
		}
		if !slices.Contains(objs, "NetworkPolicy ingress of redis port 26379 (sentinel)") {
			t.Errorf("violations on %v, want one on the Sentinel port", objs)
		}
	})
	t.Run("no master_name", func(t *testing.T) {
		m := render(t, "k8s/overlays/prod")
		toSentinel(m)
		addEnv(m, "outbox", "REDIS_URL", "redis+sentinel://:$(REDIS_PASSWORD)@redis-0.redis-headless:26379/0")
		var objs []string
		for _, v := range relevant(m) {
			objs = append(objs, string(v.Rule)+" "+v.Object)
		}
		if !slices.Contains(objs, "address Deployment/outbox REDIS_URL") {
			t.Errorf("violations on %v, want an address one on outbox's REDIS_URL", objs)
		}
	})
}

// TestProdNamespaceAppliesFirst: the prod Secrets are created by hand in the namespace before the
// overlay is applied (docs/operations.md, "First install"), so namespace.yaml must apply on its
// own — one Namespace, named as the overlay's namespace, with the Pod Security labels the
// rendered overlay gives it — and kubectl apply -f on it needs nothing else.
func TestProdNamespaceAppliesFirst(t *testing.T) {
	dir := filepath.Join("k8s", "overlays", "prod")
	raw, err := os.ReadFile(filepath.Join(dir, "namespace.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	alone, err := deploy.Decode(raw)
	if err != nil {
		t.Fatalf("namespace.yaml on its own: %v", err)
	}
	if len(alone.Namespaces) != 1 || len(alone.Workloads()) != 0 || len(alone.Services) != 0 || len(alone.ConfigMaps) != 0 {
		t.Fatalf("namespace.yaml must hold exactly one Namespace and nothing else: %+v", alone)
	}
	ns := alone.Namespaces[0]
	if ns.Name != overlays["prod"].Namespace {
		t.Errorf("namespace.yaml names %q, the overlay renders into %q", ns.Name, overlays["prod"].Namespace)
	}
	rendered := render(t, dir)
	if len(rendered.Namespaces) != 1 || !maps.Equal(rendered.Namespaces[0].Labels, ns.Labels) {
		t.Errorf("the rendered Namespace differs from namespace.yaml applied first: %+v vs %+v", rendered.Namespaces, ns)
	}
}
