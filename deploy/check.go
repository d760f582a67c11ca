package deploy

import (
	"fmt"
	"maps"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Services are the Postamt services; each runs as `postamt serve NAME` in a Deployment of that
// name with its Services, PodDisruptionBudget, HorizontalPodAutoscaler and NetworkPolicy.
var Services = []string{"mailbox", "outbox", "tracker", "calendar", "gateway"}

// ReadinessService is the health service name the readiness probes ask for; it is
// internal/grpcserver.ReadinessService, repeated so that this module needs none of the suite's.
const ReadinessService = "readiness"

// ComponentLabel and APIComponent mark the pods of the Postamt services (not NATS or Redis).
const (
	ComponentLabel = "app.kubernetes.io/component"
	APIComponent   = "api"
)

// Defaults of the variables the grace rule reads, as docs/configuration.md gives them.
var envDefaults = map[string]string{
	"GRPC_ADDR":           ":9090",
	"OPS_ADDR":            ":9091",
	"DRAIN_DELAY":         "2s",
	"DRAIN_TIMEOUT":       "30s",
	"OUTBOX_STOP_TIMEOUT": "60s",
}

// outboxRecordFlush is the time a stopping outbox gives Redis to take its last results, after
// OUTBOX_STOP_TIMEOUT (services/outbox/internal/dispatch).
const outboxRecordFlush = 10 * time.Second

// Rule names a check; a Violation says which one failed.
type Rule string

// The rules Check applies.
const (
	RuleSelector    Rule = "selector"     // Services, PDBs and workloads select the pods they mean
	RuleProbe       Rule = "probe"        // gRPC probes on declared ports, readiness on ReadinessService
	RulePorts       Rule = "ports"        // GRPC_ADDR and OPS_ADDR agree with the declared ports
	RuleSecurity    Rule = "security"     // the restricted pod security profile
	RuleGrace       Rule = "grace"        // termination grace longer than preStop and the drain
	RuleImage       Rule = "image"        // images pinned by digest or exact version
	RuleDefaultDeny Rule = "default-deny" // a NetworkPolicy denying every flow not allowed
	RuleFlow        Rule = "flow"         // the policies allow the configured addresses and no flow nobody uses
	RuleAddress     Rule = "address"      // a configured address is readable, read and names a Service
	RuleDisruption  Rule = "pdb"          // PodDisruptionBudgets select existing workloads
	RuleAutoscale   Rule = "hpa"          // autoscalers target existing workloads
	RuleResources   Rule = "resources"    // requests and memory limits
	RuleReference   Rule = "reference"    // referenced ConfigMaps and Secrets exist or are expected
	RuleNamespace   Rule = "namespace"    // the namespace enforces the restricted profile
	RuleComplete    Rule = "complete"     // every service has all its objects
	RuleStore       Rule = "store"        // NATS and Redis durability settings
	RuleHA          Rule = "ha"           // stateful sets replicated, spread, budgeted, on volumes (prod)
)

// Violation is one failed rule on one object.
type Violation struct {
	// Rule is the rule that failed.
	Rule Rule
	// Object names what failed it, e.g. "Deployment/outbox container outbox".
	Object string
	// Msg says how.
	Msg string
}

// Error renders "rule: object: message".
func (v Violation) Error() string { return fmt.Sprintf("%s: %s: %s", v.Rule, v.Object, v.Msg) }

// Rules are what an overlay expects beyond the rules every manifest keeps.
type Rules struct {
	// PinnedImages requires every image to name a digest or an exact version tag (production).
	PinnedImages bool
	// External are the ConfigMaps and Secrets ("ConfigMap/name", "Secret/name") the manifest
	// references without rendering them: the operator creates them. A reference to anything
	// else that is not rendered is a violation, and so is an entry referenced by nothing.
	External []string
	// Namespace, when set, is the namespace every object must be in, rendered with the
	// restricted Pod Security Standard enforced.
	Namespace string
	// HighAvailability requires every StatefulSet (NATS, Redis) to survive the loss of one pod
	// or node: at least three replicas, a PodDisruptionBudget of maxUnavailable 1, required
	// anti-affinity across nodes, a spread across zones, persistent volumes and probes; and
	// Redis replicated (a Cluster or Sentinel set), not one server (production).
	HighAvailability bool
}

// Check applies every rule to m and returns the violations, none when m is fine.
func Check(m *Manifest, r Rules) []Violation {
	c := &checker{m: m}
	c.complete()
	c.selectors()
	c.probes()
	c.security()
	c.grace()
	c.images(r.PinnedImages)
	c.defaultDeny()
	c.flows()
	c.redisPeers()
	c.disruption()
	c.autoscale()
	c.resources()
	c.references(r.External)
	c.namespace(r.Namespace)
	c.stores()
	if r.HighAvailability {
		c.highAvailability()
	}
	return c.out
}

type checker struct {
	m   *Manifest
	out []Violation
}

func (c *checker) fail(rule Rule, object, format string, args ...any) {
	c.out = append(c.out, Violation{Rule: rule, Object: object, Msg: fmt.Sprintf(format, args...)})
}

func isAPI(w Workload) bool { return w.Template.Labels[ComponentLabel] == APIComponent }

// complete: every service has its Deployment, both Services, PDB, HPA and NetworkPolicy.
func (c *checker) complete() {
	m := c.m
	for _, s := range Services {
		obj := "service " + s
		if m.Deployment(s) == nil {
			c.fail(RuleComplete, obj, "no Deployment %s", s)
		}
		if !slices.ContainsFunc(m.Services, func(v *corev1.Service) bool { return v.Name == s && v.Spec.ClusterIP != corev1.ClusterIPNone }) {
			c.fail(RuleComplete, obj, "no Service %s", s)
		}
		if !slices.ContainsFunc(m.Services, func(v *corev1.Service) bool {
			return v.Name == s+"-headless" && v.Spec.ClusterIP == corev1.ClusterIPNone
		}) {
			c.fail(RuleComplete, obj, "no headless Service %s-headless", s)
		}
		if !slices.ContainsFunc(m.PDBs, func(p *policyv1.PodDisruptionBudget) bool { return p.Name == s }) {
			c.fail(RuleComplete, obj, "no PodDisruptionBudget %s", s)
		}
		if !slices.ContainsFunc(m.HPAs, func(h *autoscalingv2.HorizontalPodAutoscaler) bool { return h.Name == s }) {
			c.fail(RuleComplete, obj, "no HorizontalPodAutoscaler %s", s)
		}
		if !slices.ContainsFunc(m.NetworkPolicies, func(p *networkingv1.NetworkPolicy) bool { return p.Name == s }) {
			c.fail(RuleComplete, obj, "no NetworkPolicy %s", s)
		}
	}
	for _, name := range []string{"nats", "redis"} {
		if !slices.ContainsFunc(m.StatefulSets, func(s *appsv1.StatefulSet) bool { return s.Name == name }) {
			c.fail(RuleComplete, "StatefulSet/"+name, "missing")
		}
	}
}

// selectors: each workload selects its own template; each Service selects the pods of some
// workload and targets ports those pods declare; a StatefulSet's governing Service exists.
func (c *checker) selectors() {
	m := c.m
	for _, w := range m.Workloads() {
		obj := w.Kind + "/" + w.Name
		if w.Kind == "Job" {
			continue // the API server generates a Job's selector
		}
		if w.Selector == nil || (len(w.Selector.MatchLabels) == 0 && len(w.Selector.MatchExpressions) == 0) {
			c.fail(RuleSelector, obj, "empty selector")
		} else if !matches(w.Selector, w.Template.Labels) {
			c.fail(RuleSelector, obj, "selector does not match its pod template's labels %v", w.Template.Labels)
		}
	}
	for _, s := range m.StatefulSets {
		if !slices.ContainsFunc(m.Services, func(v *corev1.Service) bool {
			return v.Name == s.Spec.ServiceName && v.Spec.ClusterIP == corev1.ClusterIPNone
		}) {
			c.fail(RuleSelector, "StatefulSet/"+s.Name, "serviceName %q is not a headless Service", s.Spec.ServiceName)
		}
	}
	for _, s := range m.Services {
		obj := "Service/" + s.Name
		if len(s.Spec.Selector) == 0 {
			c.fail(RuleSelector, obj, "no selector")
			continue
		}
		sel := &metav1.LabelSelector{MatchLabels: s.Spec.Selector}
		var selected []Workload
		for _, w := range m.Workloads() {
			if matches(sel, w.Template.Labels) {
				selected = append(selected, w)
			}
		}
		if len(selected) == 0 {
			c.fail(RuleSelector, obj, "selector %v matches no workload's pods", s.Spec.Selector)
			continue
		}
		for _, p := range s.Spec.Ports {
			for _, w := range selected {
				if !declares(w.Template, p.TargetPort.StrVal, p.TargetPort.IntVal) {
					c.fail(RuleSelector, obj, "port %s targets %s, which %s/%s does not declare", p.Name, p.TargetPort.String(), w.Kind, w.Name)
				}
			}
		}
	}
}

// declares reports whether some container of t declares the port by name (when name is set) or
// by number.
func declares(t *corev1.PodTemplateSpec, name string, number int32) bool {
	for _, ct := range t.Spec.Containers {
		for _, p := range ct.Ports {
			if (name != "" && p.Name == name) || (name == "" && p.ContainerPort == number) {
				return true
			}
		}
	}
	return false
}

func portNamed(ct *corev1.Container, name string) (int32, bool) {
	for _, p := range ct.Ports {
		if p.Name == name {
			return p.ContainerPort, true
		}
	}
	return 0, false
}

// probes: the Postamt services probe over gRPC on their declared "grpc" port, readiness on
// ReadinessService and liveness on the whole server (""); every probe of any container uses a
// port the container declares; GRPC_ADDR and OPS_ADDR listen where the ports say.
func (c *checker) probes() {
	for _, w := range c.m.Workloads() {
		for i := range w.Template.Spec.Containers {
			ct := &w.Template.Spec.Containers[i]
			obj := fmt.Sprintf("%s/%s container %s", w.Kind, w.Name, ct.Name)
			for kind, p := range map[string]*corev1.Probe{"startup": ct.StartupProbe, "readiness": ct.ReadinessProbe, "liveness": ct.LivenessProbe} {
				if p == nil {
					continue
				}
				switch h := p.ProbeHandler; {
				case h.GRPC != nil:
					if !declares(w.Template, "", h.GRPC.Port) {
						c.fail(RuleProbe, obj, "%s probe on undeclared port %d", kind, h.GRPC.Port)
					}
				case h.HTTPGet != nil:
					if !declares(w.Template, h.HTTPGet.Port.StrVal, h.HTTPGet.Port.IntVal) {
						c.fail(RuleProbe, obj, "%s probe on undeclared port %s", kind, h.HTTPGet.Port.String())
					}
				case h.TCPSocket != nil:
					if !declares(w.Template, h.TCPSocket.Port.StrVal, h.TCPSocket.Port.IntVal) {
						c.fail(RuleProbe, obj, "%s probe on undeclared port %s", kind, h.TCPSocket.Port.String())
					}
				}
			}
			if !isAPI(w) {
				continue
			}
			grpcPort, ok := portNamed(ct, "grpc")
			if !ok {
				c.fail(RuleProbe, obj, "declares no port named grpc")
			}
			opsPort, hasOps := portNamed(ct, "ops")
			if !hasOps {
				c.fail(RuleProbe, obj, "declares no port named ops")
			}
			check := func(kind string, p *corev1.Probe, service string) {
				switch {
				case p == nil:
					c.fail(RuleProbe, obj, "no %s probe", kind)
				case p.GRPC == nil:
					c.fail(RuleProbe, obj, "%s probe is not gRPC", kind)
				case p.GRPC.Port != grpcPort:
					c.fail(RuleProbe, obj, "%s probe on port %d, not the grpc port %d", kind, p.GRPC.Port, grpcPort)
				case ptrString(p.GRPC.Service) != service:
					c.fail(RuleProbe, obj, "%s probe asks for service %q, want %q", kind, ptrString(p.GRPC.Service), service)
				}
			}
			check("readiness", ct.ReadinessProbe, ReadinessService)
			check("liveness", ct.LivenessProbe, "")
			if ct.StartupProbe != nil {
				check("startup", ct.StartupProbe, "")
			}
			env := c.m.Env(ct)
			for v, want := range map[string]int32{"GRPC_ADDR": grpcPort, "OPS_ADDR": opsPort} {
				addr := cmpOr(env[v], envDefaults[v])
				_, port, err := net.SplitHostPort(addr)
				if n, perr := strconv.ParseInt(port, 10, 32); err != nil || perr != nil || int32(n) != want {
					c.fail(RulePorts, obj, "%s=%q does not listen on the declared port %d", v, addr, want)
				}
			}
		}
	}
}

func ptrString(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// security: the restricted Pod Security Standard, plus a read-only root filesystem and no
// service-account token, on every pod and container.
func (c *checker) security() {
	for _, w := range c.m.Workloads() {
		obj := w.Kind + "/" + w.Name
		ps := &w.Template.Spec
		if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
			c.fail(RuleSecurity, obj, "automountServiceAccountToken is not false")
		}
		if ps.HostNetwork || ps.HostPID || ps.HostIPC {
			c.fail(RuleSecurity, obj, "shares a host namespace")
		}
		for _, v := range ps.Volumes {
			if v.HostPath != nil {
				c.fail(RuleSecurity, obj, "volume %s is a hostPath", v.Name)
			}
		}
		pod := ps.SecurityContext
		if pod == nil {
			pod = &corev1.PodSecurityContext{}
		}
		if pod.RunAsUser != nil && *pod.RunAsUser == 0 {
			c.fail(RuleSecurity, obj, "pod runs as uid 0")
		}
		if pod.SeccompProfile != nil && pod.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault && pod.SeccompProfile.Type != corev1.SeccompProfileTypeLocalhost {
			c.fail(RuleSecurity, obj, "pod seccomp profile %s", pod.SeccompProfile.Type)
		}
		containers := append(slices.Clone(ps.InitContainers), ps.Containers...)
		for i := range containers {
			ct := &containers[i]
			cobj := obj + " container " + ct.Name
			sc := ct.SecurityContext
			if sc == nil {
				c.fail(RuleSecurity, cobj, "no securityContext")
				continue
			}
			nonRoot := (sc.RunAsNonRoot != nil && *sc.RunAsNonRoot) || (sc.RunAsNonRoot == nil && pod.RunAsNonRoot != nil && *pod.RunAsNonRoot)
			if !nonRoot {
				c.fail(RuleSecurity, cobj, "runAsNonRoot is not true")
			}
			if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
				c.fail(RuleSecurity, cobj, "runs as uid 0")
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				c.fail(RuleSecurity, cobj, "allowPrivilegeEscalation is not false")
			}
			if sc.Privileged != nil && *sc.Privileged {
				c.fail(RuleSecurity, cobj, "privileged")
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				c.fail(RuleSecurity, cobj, "readOnlyRootFilesystem is not true")
			}
			if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
				c.fail(RuleSecurity, cobj, "capabilities do not drop ALL")
			} else if len(sc.Capabilities.Add) > 0 {
				c.fail(RuleSecurity, cobj, "adds capabilities %v", sc.Capabilities.Add)
			}
			seccomp := sc.SeccompProfile
			if seccomp == nil {
				seccomp = pod.SeccompProfile
			}
			if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
				c.fail(RuleSecurity, cobj, "seccomp profile is not RuntimeDefault")
			}
		}
	}
}

// grace: a Postamt service sleeps in preStop (endpoints drop it first), then drains
// (DRAIN_DELAY + DRAIN_TIMEOUT); the outbox's dispatcher finishes its SMTP conversations
// (OUTBOX_STOP_TIMEOUT) and records their results (10 s). It does so while the API drains, but
// the rule adds the two up, which also covers a dispatcher still recording after the drain. The
// grace period must exceed all of it. For any other container
// with a preStop sleep, the grace must exceed the sleep.
func (c *checker) grace() {
	for _, w := range c.m.Workloads() {
		obj := w.Kind + "/" + w.Name
		gp := int64(corev1.DefaultTerminationGracePeriodSeconds)
		if s := w.Template.Spec.TerminationGracePeriodSeconds; s != nil {
			gp = *s
		}
		grace := time.Duration(gp) * time.Second
		for i := range w.Template.Spec.Containers {
			ct := &w.Template.Spec.Containers[i]
			cobj := obj + " container " + ct.Name
			var sleep time.Duration
			if ct.Lifecycle != nil && ct.Lifecycle.PreStop != nil && ct.Lifecycle.PreStop.Sleep != nil {
				sleep = time.Duration(ct.Lifecycle.PreStop.Sleep.Seconds) * time.Second
			}
			if !isAPI(w) {
				if grace <= sleep {
					c.fail(RuleGrace, cobj, "grace %s is not longer than the preStop sleep %s", grace, sleep)
				}
				continue
			}
			if sleep <= 0 {
				c.fail(RuleGrace, cobj, "no preStop sleep")
			}
			env := c.m.Env(ct)
			need := sleep
			vars := []string{"DRAIN_DELAY", "DRAIN_TIMEOUT"}
			if slices.Equal(ct.Args, []string{"serve", "outbox"}) {
				vars = append(vars, "OUTBOX_STOP_TIMEOUT")
				need += outboxRecordFlush
			}
			for _, v := range vars {
				d, err := time.ParseDuration(cmpOr(env[v], envDefaults[v]))
				if err != nil {
					c.fail(RuleGrace, cobj, "%s: %v", v, err)
					continue
				}
				need += d
			}
			if grace <= need {
				c.fail(RuleGrace, cobj, "grace %s is not longer than preStop + %s (+ the outbox's record flush) = %s", grace, strings.Join(vars, " + "), need)
			}
		}
	}
}

// exactVersion is a tag naming one release: 1.2.3, v1.2.3, 1.2.3-alpine.
var exactVersion = regexp.MustCompile(`^v?[0-9]+\.[0-9]+\.[0-9]+([-+.][0-9A-Za-z.-]+)?$`)

// images: every container names an image with a tag or digest; pinned (production) means a
// digest or an exact version tag, never latest.
func (c *checker) images(pinned bool) {
	for _, w := range c.m.Workloads() {
		containers := append(slices.Clone(w.Template.Spec.InitContainers), w.Template.Spec.Containers...)
		for _, ct := range containers {
			obj := fmt.Sprintf("%s/%s container %s", w.Kind, w.Name, ct.Name)
			ref, digest, hasDigest := strings.Cut(ct.Image, "@")
			tag := ""
			if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
				tag = ref[i+1:]
			}
			switch {
			case hasDigest && !regexp.MustCompile(`^sha256:[0-9a-f]{64}$`).MatchString(digest):
				c.fail(RuleImage, obj, "image %q has a malformed digest", ct.Image)
			case !hasDigest && tag == "":
				c.fail(RuleImage, obj, "image %q names no tag or digest", ct.Image)
			case pinned && !hasDigest && !exactVersion.MatchString(tag):
				c.fail(RuleImage, obj, "image %q is not pinned by digest or exact version", ct.Image)
			}
		}
	}
}

// defaultDeny: a NetworkPolicy selects every pod for both directions and allows nothing.
func (c *checker) defaultDeny() {
	for _, p := range c.m.NetworkPolicies {
		s := p.Spec
		if len(s.PodSelector.MatchLabels) == 0 && len(s.PodSelector.MatchExpressions) == 0 &&
			hasType(p, networkingv1.PolicyTypeIngress) && hasType(p, networkingv1.PolicyTypeEgress) &&
			len(s.Ingress) == 0 && len(s.Egress) == 0 {
			return
		}
	}
	c.fail(RuleDefaultDeny, "NetworkPolicy", "none denies every ingress and egress of every pod")
}

// Flow is a connection the network policies must allow (Want) or refuse.
type Flow struct {
	// From opens the connection to To.
	From, To Endpoint
	// Port and Protocol are the destination's.
	Port     int32
	Protocol corev1.Protocol
	// Want says whether the policies must allow the flow (true) or refuse it.
	Want bool
	// Name says what the flow is, in violations.
	Name string
}

// Flows are the connections that no configured address names, in m's namespace: DNS, the
// scrapes from "monitoring", the ingress controller's calls, the SMTP relays and CalDAV servers
// (whose addresses live in connectors and calendars, not in the environment) and the NATS
// cluster's routes; and some the suite must not have. The flows between the Postamt services and
// to Redis and NATS come from the configuration instead (Dials).
func (m *Manifest) Flows() []Flow {
	pod := m.Pod
	outside := func(namespace string) Endpoint {
		return Endpoint{Namespace: namespace, Labels: map[string]string{"app": "x"}}
	}
	dns := Endpoint{Namespace: "kube-system", Labels: map[string]string{"k8s-app": "kube-dns"}}
	smtpRelay := Endpoint{IP: "203.0.113.25"}
	caldav := Endpoint{IP: "2001:db8::443"}
	var fs []Flow
	add := func(want bool, name string, from, to Endpoint, port int32, proto corev1.Protocol) {
		fs = append(fs, Flow{From: from, To: to, Port: port, Protocol: proto, Want: want, Name: name})
	}
	for _, s := range Services {
		add(true, s+" → DNS", pod(s), dns, 53, corev1.ProtocolUDP)
		add(true, "monitoring → "+s+" ops", outside("monitoring"), pod(s), 9091, corev1.ProtocolTCP)
		add(false, "other namespace → "+s, outside("elsewhere"), pod(s), 9090, corev1.ProtocolTCP)
		if s != "gateway" {
			add(false, "ingress → "+s, outside("ingress-nginx"), pod(s), 9090, corev1.ProtocolTCP)
		}
	}
	add(true, "ingress → gateway http", outside("ingress-nginx"), pod("gateway"), 8080, corev1.ProtocolTCP)
	add(true, "ingress → gateway grpc", outside("ingress-nginx"), pod("gateway"), 9090, corev1.ProtocolTCP)
	add(true, "outbox → SMTP relay 587", pod("outbox"), smtpRelay, 587, corev1.ProtocolTCP)
	add(true, "outbox → SMTP relay 25", pod("outbox"), smtpRelay, 25, corev1.ProtocolTCP)
	add(true, "calendar → CalDAV 443", pod("calendar"), caldav, 443, corev1.ProtocolTCP)
	add(true, "nats → nats cluster", pod("nats"), pod("nats"), 6222, corev1.ProtocolTCP)
	add(false, "tracker → SMTP relay", pod("tracker"), smtpRelay, 587, corev1.ProtocolTCP)
	add(false, "mailbox → outside", pod("mailbox"), caldav, 443, corev1.ProtocolTCP)
	add(false, "gateway → outside", pod("gateway"), caldav, 443, corev1.ProtocolTCP)
	add(false, "redis → outside", pod("redis"), caldav, 443, corev1.ProtocolTCP)
	add(false, "ingress → redis", outside("ingress-nginx"), pod("redis"), 6379, corev1.ProtocolTCP)
	add(false, "other namespace → nats", outside("elsewhere"), pod("nats"), 4222, corev1.ProtocolTCP)
	// A replicated Redis (Cluster or Sentinel): its servers replicate from each other on the data
	// port and talk on their peer ports; nothing but Redis reaches those (RedisPeerPorts); the Job
	// forming a Cluster reaches the data port.
	if peers := m.RedisPeerPorts(); len(peers) > 0 {
		redis := pod(RedisName)
		add(true, "redis → redis replication", redis, redis, SentinelDataPort, corev1.ProtocolTCP)
		for _, cp := range peers {
			name := fmt.Sprintf("redis %s %d", cp.Name, cp.ContainerPort)
			add(true, "redis → "+name, redis, redis, cp.ContainerPort, corev1.ProtocolTCP)
			add(false, "other namespace → "+name, outside("elsewhere"), redis, cp.ContainerPort, corev1.ProtocolTCP)
			add(false, "monitoring → "+name, outside("monitoring"), redis, cp.ContainerPort, corev1.ProtocolTCP)
			add(false, "ingress → "+name, outside("ingress-nginx"), redis, cp.ContainerPort, corev1.ProtocolTCP)
		}
	}
	for _, j := range m.Jobs {
		if j.Name == RedisClusterInit {
			add(true, j.Name+" → redis", pod(j.Name), pod(RedisName), SentinelDataPort, corev1.ProtocolTCP)
		}
	}
	return fs
}

// RedisName is the StatefulSet of Redis; RedisClusterInit the Job that forms a Redis Cluster of
// its pods (prod), which reaches their data port.
const (
	RedisName        = "redis"
	RedisClusterInit = "redis-cluster-init"
)

// Redis peer ports: the Cluster bus and the Sentinel port, by name or number.
const (
	ClusterBusPort = 16379
	SentinelPort   = 26379
)

// RedisPeerPorts are the container ports of the Redis pods on which Redis servers talk to each
// other: the Cluster bus (named cluster-bus, or 16379) and the Sentinel port (named sentinel, or
// 26379). None for a single Redis.
func (m *Manifest) RedisPeerPorts() []corev1.ContainerPort {
	var out []corev1.ContainerPort
	for _, cp := range m.Pod(RedisName).Ports {
		if cp.Name == "cluster-bus" || cp.Name == "sentinel" || cp.ContainerPort == ClusterBusPort || cp.ContainerPort == SentinelPort {
			out = append(out, cp)
		}
	}
	return out
}

// redisPeers: the Cluster bus is reachable between the Redis pods only, and the Sentinel port
// between the Redis pods and the services whose REDIS_URL names the sentinels; nothing else, in
// the namespace or outside it, gets in. (dialFlows finds the same rules from the callers' side
// too; this says which port and why.)
func (c *checker) redisPeers() {
	m := c.m
	peers := m.RedisPeerPorts()
	if len(peers) == 0 {
		return
	}
	redis := m.Pod(RedisName)
	sentinelClients := map[string]bool{}
	for _, d := range m.Dials() {
		if d.Topology == TopologySentinel && d.Err == nil {
			sentinelClients[d.Service] = true
		}
	}
	srcs := map[string]Endpoint{
		"a pod of another namespace": {Namespace: "elsewhere", Labels: map[string]string{"app": "x"}},
		"an address outside":         {IP: "198.51.100.7"},
	}
	for _, w := range m.Workloads() {
		if w.Name != RedisName {
			srcs[w.Kind+"/"+w.Name] = m.Pod(w.Name)
		}
	}
	for _, cp := range peers {
		port := cp.ContainerPort
		obj := fmt.Sprintf("NetworkPolicy ingress of %s port %d (%s)", RedisName, port, cp.Name)
		if !m.Allowed(redis, redis, port, corev1.ProtocolTCP) {
			c.fail(RuleFlow, obj, "the Redis pods cannot reach each other on it")
		}
		for _, name := range slices.Sorted(maps.Keys(srcs)) {
			src := srcs[name]
			sentinel := cp.Name == "sentinel" || port == SentinelPort
			if sentinel && sentinelClients[m.workloadOf(src)] {
				continue
			}
			if m.Ingress(src, redis, port, corev1.ProtocolTCP) {
				c.fail(RuleFlow, obj, "admits %s: only Redis pods (and, on the Sentinel port, the services whose REDIS_URL names the sentinels) may reach it", name)
			}
		}
	}
}

// flows: the policies allow what Flows wants and refuse the rest it lists (dialFlows covers the
// rest).
func (c *checker) flows() {
	for _, f := range c.m.Flows() {
		if got := c.m.Allowed(f.From, f.To, f.Port, f.Protocol); got != f.Want {
			verb := "refuses"
			if got {
				verb = "allows"
			}
			c.fail(RuleFlow, "NetworkPolicy", "%s (port %d/%s): policies %s it", f.Name, f.Port, f.Protocol, verb)
		}
	}
	c.dialFlows()
}

// podPort is a connection between two workloads of the manifest.
type podPort struct {
	from, to string
	port     int32
}

// dialFlows derives the flows between the workloads from the configuration, so that the two
// cannot drift apart: every address a service is configured to dial (Dials) names a Service of
// the manifest or an IP address, is one the service reads (Unread), and is allowed by both the
// egress policy of the caller and the ingress policy of the callee; and every connection from
// one workload to a port another declares that an egress or an ingress policy allows is needed
// by some configured address or listed in Flows (a flow nobody uses is a violation, on each side
// on its own).
func (c *checker) dialFlows() {
	m := c.m
	needed := map[podPort]bool{}
	for _, d := range m.Dials() {
		obj := "Deployment/" + d.Service + " " + d.Var
		if slices.Contains(Unread[d.Service], d.Var) {
			c.fail(RuleAddress, obj, "set to %s, but %s does not read it", d.Address, d.Service)
			continue
		}
		if d.Err != nil {
			c.fail(RuleAddress, obj, "%s: %v", d.Address, d.Err)
			continue
		}
		if d.Local {
			continue
		}
		from := m.Pod(d.Service)
		to, port, ok := m.Target(from.Namespace, d.Host, d.Port)
		if !ok {
			c.fail(RuleAddress, obj, "%s names no Service of the manifest (and no IP address): the flow it needs cannot be checked", d.Address)
			continue
		}
		ports := []int32{port}
		if d.Topology == TopologySentinel {
			// The data nodes the sentinels name: the sentinels' pods, on the data port.
			if to.Labels == nil || !slices.ContainsFunc(to.Ports, func(cp corev1.ContainerPort) bool { return cp.ContainerPort == SentinelDataPort }) {
				c.fail(RuleAddress, obj, "%s: the sentinels' pods declare no data port %d, so the flow to the data nodes they name cannot be checked", d.Address, SentinelDataPort)
			} else {
				ports = append(ports, SentinelDataPort)
			}
		}
		for _, port := range ports {
			if to.Labels != nil {
				needed[podPort{d.Service, m.workloadOf(to), port}] = true
			}
			if !m.Egress(from, to, port, corev1.ProtocolTCP) {
				c.fail(RuleFlow, obj, "%s → %s (port %d): the egress policy of %s refuses it", d.Service, d.Address, port, d.Service)
			}
			if !m.Ingress(from, to, port, corev1.ProtocolTCP) {
				c.fail(RuleFlow, obj, "%s → %s (port %d): the ingress policy of %s refuses it", d.Service, d.Address, port, m.workloadOf(to))
			}
		}
	}
	for _, f := range m.Flows() {
		if f.Want && f.From.Labels != nil && f.To.Labels != nil {
			needed[podPort{m.workloadOf(f.From), m.workloadOf(f.To), f.Port}] = true
		}
	}
	for _, src := range m.Workloads() {
		from := m.Pod(src.Name)
		for _, dst := range m.Workloads() {
			to := m.Pod(dst.Name)
			for _, cp := range to.Ports {
				if cp.Protocol != "" && cp.Protocol != corev1.ProtocolTCP {
					continue
				}
				if needed[podPort{src.Name, dst.Name, cp.ContainerPort}] {
					continue
				}
				flow := fmt.Sprintf("%s → %s port %d (%s)", src.Name, dst.Name, cp.ContainerPort, cp.Name)
				if m.Egress(from, to, cp.ContainerPort, corev1.ProtocolTCP) {
					c.fail(RuleFlow, "NetworkPolicy egress of "+src.Name, "allows %s, which no configured address needs", flow)
				}
				if m.Ingress(from, to, cp.ContainerPort, corev1.ProtocolTCP) {
					c.fail(RuleFlow, "NetworkPolicy ingress of "+dst.Name, "allows %s, which no configured address needs", flow)
				}
			}
		}
	}
}

// workloadOf names the workload whose pods e is, or "".
func (m *Manifest) workloadOf(e Endpoint) string {
	for _, w := range m.Workloads() {
		if e.Labels != nil && maps.Equal(w.Template.Labels, e.Labels) && m.namespaceOf(w.Kind, w.Name) == e.Namespace {
			return w.Name
		}
	}
	return ""
}

// disruption: each PDB selects the pods of some workload.
func (c *checker) disruption() {
	for _, p := range c.m.PDBs {
		obj := "PodDisruptionBudget/" + p.Name
		if p.Spec.Selector == nil || !slices.ContainsFunc(c.m.Workloads(), func(w Workload) bool { return matches(p.Spec.Selector, w.Template.Labels) }) {
			c.fail(RuleDisruption, obj, "selects no workload's pods")
		}
		if p.Spec.MinAvailable == nil && p.Spec.MaxUnavailable == nil {
			c.fail(RuleDisruption, obj, "sets neither minAvailable nor maxUnavailable")
		}
	}
}

// autoscale: each HPA targets an existing workload of its kind, with sane bounds; a Deployment an
// HPA scales leaves spec.replicas unset, so that applying the manifests does not undo the HPA.
func (c *checker) autoscale() {
	for _, h := range c.m.HPAs {
		obj := "HorizontalPodAutoscaler/" + h.Name
		ref := h.Spec.ScaleTargetRef
		found := slices.ContainsFunc(c.m.Workloads(), func(w Workload) bool { return w.Kind == ref.Kind && w.Name == ref.Name }) && ref.APIVersion == "apps/v1"
		if !found {
			c.fail(RuleAutoscale, obj, "targets %s %s/%s, which is not rendered", ref.APIVersion, ref.Kind, ref.Name)
		}
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 1 || *h.Spec.MinReplicas > h.Spec.MaxReplicas {
			c.fail(RuleAutoscale, obj, "bounds min %v max %d", h.Spec.MinReplicas, h.Spec.MaxReplicas)
		}
		if d := c.m.Deployment(ref.Name); ref.Kind == "Deployment" && d != nil && d.Spec.Replicas != nil {
			c.fail(RuleAutoscale, obj, "Deployment/%s sets replicas, which every apply would reset", d.Name)
		}
		if len(h.Spec.Metrics) == 0 {
			c.fail(RuleAutoscale, obj, "no metrics")
		}
	}
}

// resources: every container requests CPU and memory and limits memory.
func (c *checker) resources() {
	for _, w := range c.m.Workloads() {
		for _, ct := range w.Template.Spec.Containers {
			obj := fmt.Sprintf("%s/%s container %s", w.Kind, w.Name, ct.Name)
			r := ct.Resources
			if r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() {
				c.fail(RuleResources, obj, "requests no CPU or no memory")
			}
			if r.Limits.Memory().IsZero() {
				c.fail(RuleResources, obj, "no memory limit")
			} else if r.Limits.Memory().Cmp(*r.Requests.Memory()) < 0 {
				c.fail(RuleResources, obj, "memory limit below the request")
			}
		}
	}
}

// references: every ConfigMap and Secret a pod names is rendered, listed as external, or optional.
func (c *checker) references(external []string) {
	have := map[string]bool{}
	for _, cm := range c.m.ConfigMaps {
		have["ConfigMap/"+cm.Name] = true
	}
	for _, s := range c.m.Secrets {
		have["Secret/"+s.Name] = true
	}
	used := map[string]bool{}
	for _, w := range c.m.Workloads() {
		obj := w.Kind + "/" + w.Name
		refs := map[string]bool{} // reference → optional
		ref := func(name string, optional *bool) {
			refs[name] = refs[name] || (optional != nil && *optional)
		}
		ps := &w.Template.Spec
		for _, v := range ps.Volumes {
			if v.ConfigMap != nil {
				ref("ConfigMap/"+v.ConfigMap.Name, v.ConfigMap.Optional)
			}
			if v.Secret != nil {
				ref("Secret/"+v.Secret.SecretName, v.Secret.Optional)
			}
		}
		for _, ct := range append(slices.Clone(ps.InitContainers), ps.Containers...) {
			for _, e := range ct.EnvFrom {
				if e.ConfigMapRef != nil {
					ref("ConfigMap/"+e.ConfigMapRef.Name, e.ConfigMapRef.Optional)
				}
				if e.SecretRef != nil {
					ref("Secret/"+e.SecretRef.Name, e.SecretRef.Optional)
				}
			}
			for _, e := range ct.Env {
				if e.ValueFrom == nil {
					continue
				}
				if r := e.ValueFrom.ConfigMapKeyRef; r != nil {
					ref("ConfigMap/"+r.Name, r.Optional)
				}
				if r := e.ValueFrom.SecretKeyRef; r != nil {
					ref("Secret/"+r.Name, r.Optional)
				}
			}
		}
		for _, r := range slices.Sorted(maps.Keys(refs)) {
			used[r] = true
			if !have[r] && !refs[r] && !slices.Contains(external, r) {
				c.fail(RuleReference, obj, "references %s, which is neither rendered nor listed as external", r)
			}
		}
	}
	for _, e := range external {
		if !used[e] {
			c.fail(RuleReference, e, "listed as external but referenced by no workload")
		}
		if have[e] {
			c.fail(RuleReference, e, "listed as external but rendered")
		}
	}
}

// namespace: every namespaced object is in ns, whose Namespace enforces the restricted Pod
// Security Standard.
func (c *checker) namespace(ns string) {
	if ns == "" {
		return
	}
	var found bool
	for _, n := range c.m.Namespaces {
		if n.Name != ns {
			c.fail(RuleNamespace, "Namespace/"+n.Name, "unexpected namespace")
			continue
		}
		found = true
		if n.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
			c.fail(RuleNamespace, "Namespace/"+n.Name, "does not enforce the restricted Pod Security Standard")
		}
	}
	if !found {
		c.fail(RuleNamespace, "Namespace/"+ns, "not rendered")
	}
	check := func(kind string, meta metav1.ObjectMeta) {
		if meta.Namespace != ns {
			c.fail(RuleNamespace, kind+"/"+meta.Name, "in namespace %q, want %q", meta.Namespace, ns)
		}
	}
	m := c.m
	for _, o := range m.ConfigMaps {
		check("ConfigMap", o.ObjectMeta)
	}
	for _, o := range m.Secrets {
		check("Secret", o.ObjectMeta)
	}
	for _, o := range m.Services {
		check("Service", o.ObjectMeta)
	}
	for _, o := range m.Deployments {
		check("Deployment", o.ObjectMeta)
	}
	for _, o := range m.StatefulSets {
		check("StatefulSet", o.ObjectMeta)
	}
	for _, o := range m.Jobs {
		check("Job", o.ObjectMeta)
	}
	for _, o := range m.PDBs {
		check("PodDisruptionBudget", o.ObjectMeta)
	}
	for _, o := range m.HPAs {
		check("HorizontalPodAutoscaler", o.ObjectMeta)
	}
	for _, o := range m.NetworkPolicies {
		check("NetworkPolicy", o.ObjectMeta)
	}
}

// stores: NATS runs JetStream fsyncing every write; Redis keeps an append-only file fsynced on
// every write, never evicts, and takes its password from a Secret; a Redis Cluster's nodes
// authenticate to each other and announce stable names; the services' REDIS_URL and
// REDIS_REPLICA_ACKS fit the Redis that runs.
func (c *checker) stores() {
	confOf := func(set string, volumeFile string) (string, *corev1.Container) {
		for _, s := range c.m.StatefulSets {
			if s.Name != set || len(s.Spec.Template.Spec.Containers) == 0 {
				continue
			}
			for _, v := range s.Spec.Template.Spec.Volumes {
				if v.ConfigMap == nil {
					continue
				}
				if cm := c.m.ConfigMap(v.ConfigMap.Name); cm != nil && cm.Data[volumeFile] != "" {
					return cm.Data[volumeFile], &s.Spec.Template.Spec.Containers[0]
				}
			}
		}
		return "", nil
	}
	nats, _ := confOf("nats", "nats.conf")
	if !confHas(nats, "jetstream {") || !confHas(nats, "sync_interval: always") {
		c.fail(RuleStore, "StatefulSet/nats", "nats.conf lacks jetstream with sync_interval: always")
	}
	redis, ct := confOf("redis", "redis.conf")
	for _, want := range []string{"appendonly yes", "appendfsync always", "maxmemory-policy noeviction"} {
		if !confHas(redis, want) {
			c.fail(RuleStore, "StatefulSet/redis", "redis.conf lacks %q", want)
		}
	}
	if ct != nil {
		var fromSecret bool
		for _, e := range ct.Env {
			if e.Name == "REDIS_PASSWORD" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				fromSecret = true
			}
		}
		if !fromSecret || !slices.Contains(ct.Args, "$(REDIS_PASSWORD)") {
			c.fail(RuleStore, "StatefulSet/redis", "the password does not come from a Secret (REDIS_PASSWORD → --requirepass)")
		}
	}
	clustered := confHas(redis, "cluster-enabled yes")
	if clustered && ct != nil {
		c.redisCluster(ct)
	}
	c.redisClients(clustered)
}

// redisCluster: a Redis Cluster node authenticates to its master with the Secret's password,
// announces the pod's IP and stable name (so that a pod back with a new IP rejoins, and clients
// are sent to names that do not change), declares its bus port, and its governing Service
// publishes the names before the pods are ready (they are ready only once the cluster is).
func (c *checker) redisCluster(ct *corev1.Container) {
	obj := "StatefulSet/" + RedisName
	argAfter := func(flag string) string {
		if i := slices.Index(ct.Args, flag); i >= 0 && i+1 < len(ct.Args) {
			return ct.Args[i+1]
		}
		return ""
	}
	if argAfter("--masterauth") != "$(REDIS_PASSWORD)" {
		c.fail(RuleStore, obj, "a Cluster node does not authenticate to its master with the Secret's password (--masterauth $(REDIS_PASSWORD))")
	}
	if argAfter("--cluster-announce-ip") == "" || argAfter("--cluster-announce-hostname") == "" {
		c.fail(RuleStore, obj, "a Cluster node does not announce the pod's IP and stable name (--cluster-announce-ip, --cluster-announce-hostname)")
	}
	if !slices.ContainsFunc(c.m.RedisPeerPorts(), func(cp corev1.ContainerPort) bool { return cp.ContainerPort == ClusterBusPort }) {
		c.fail(RuleStore, obj, "a Cluster node declares no cluster-bus port %d", ClusterBusPort)
	}
	if s := c.m.StatefulSet(RedisName); s != nil {
		for _, v := range c.m.Services {
			if v.Name == s.Spec.ServiceName && !v.Spec.PublishNotReadyAddresses {
				c.fail(RuleStore, "Service/"+v.Name, "does not publish not-ready addresses: the Cluster's nodes cannot find each other before they are ready")
			}
		}
	}
}

// redisClients: the services' REDIS_URL fits the Redis the manifest runs (a Cluster URL for a
// Cluster, a Sentinel URL for a Sentinel set), and REDIS_REPLICA_ACKS asks for no replicas a
// single Redis does not have.
func (c *checker) redisClients(clustered bool) {
	m := c.m
	peers := m.RedisPeerPorts()
	sentinels := slices.ContainsFunc(peers, func(cp corev1.ContainerPort) bool { return cp.ContainerPort == SentinelPort })
	for _, d := range m.Dials() {
		if d.Var != "REDIS_URL" || d.Err != nil || d.Local || slices.Contains(Unread[d.Service], d.Var) {
			continue
		}
		to, _, ok := m.Target(m.Pod(d.Service).Namespace, d.Host, d.Port)
		if !ok || m.workloadOf(to) != RedisName {
			continue
		}
		obj := "Deployment/" + d.Service + " REDIS_URL"
		switch {
		case clustered && d.Topology != TopologyCluster:
			c.fail(RuleStore, obj, "%s: Redis runs as a Cluster, so the URL must be redis+cluster:// (or rediss+cluster://)", d.Address)
		case !clustered && d.Topology == TopologyCluster:
			c.fail(RuleStore, obj, "%s: a Cluster URL, but redis.conf does not enable cluster mode", d.Address)
		case d.Topology == TopologySentinel && !sentinels:
			c.fail(RuleStore, obj, "%s: a Sentinel URL, but the Redis pods declare no sentinel port %d", d.Address, SentinelPort)
		}
	}
	for _, dep := range m.Deployments {
		for i := range dep.Spec.Template.Spec.Containers {
			v := m.Env(&dep.Spec.Template.Spec.Containers[i])["REDIS_REPLICA_ACKS"]
			if n, err := strconv.Atoi(v); v != "" && (err != nil || n < 0) {
				c.fail(RuleStore, "Deployment/"+dep.Name+" REDIS_REPLICA_ACKS", "%q is not a count of replicas", v)
			} else if n > 0 && len(peers) == 0 {
				c.fail(RuleStore, "Deployment/"+dep.Name+" REDIS_REPLICA_ACKS", "asks %d replicas to confirm every write, but Redis runs without replicas: every write would wait and fail", n)
			}
		}
	}
}

// confHas reports whether some line of conf, trimmed and outside comments, is want.
func confHas(conf, want string) bool {
	for line := range strings.Lines(conf) {
		line, _, _ = strings.Cut(line, "#")
		if strings.TrimSpace(line) == want {
			return true
		}
	}
	return false
}

// Topology keys of the spread the HA rule asks for.
const (
	HostnameKey = "kubernetes.io/hostname"
	ZoneKey     = "topology.kubernetes.io/zone"
)

// highAvailability: each StatefulSet runs at least three pods, each on its own node (required
// pod anti-affinity on HostnameKey) and spread over the zones (a topology spread constraint or an
// anti-affinity term on ZoneKey), that a PodDisruptionBudget lets go one at a time, that keep
// their data on volumes of their own and are probed for readiness and liveness; and Redis is
// replicated (Cluster bus or Sentinel port declared).
func (c *checker) highAvailability() {
	m := c.m
	for _, s := range m.StatefulSets {
		obj := "StatefulSet/" + s.Name
		own := s.Spec.Template.Labels
		if s.Spec.Replicas == nil || *s.Spec.Replicas < 3 {
			c.fail(RuleHA, obj, "runs %v replicas, want at least 3", ptrInt(s.Spec.Replicas))
		}
		var budget *policyv1.PodDisruptionBudget
		for _, p := range m.PDBs {
			if p.Namespace == s.Namespace && p.Spec.Selector != nil && matches(p.Spec.Selector, own) {
				budget = p
			}
		}
		switch {
		case budget == nil:
			c.fail(RuleHA, obj, "no PodDisruptionBudget selects its pods")
		case budget.Spec.MinAvailable != nil || budget.Spec.MaxUnavailable == nil || budget.Spec.MaxUnavailable.String() != "1":
			c.fail(RuleHA, obj, "PodDisruptionBudget/%s does not set maxUnavailable: 1 (alone)", budget.Name)
		}
		ps := &s.Spec.Template.Spec
		if !antiAffine(ps.Affinity, own, HostnameKey, true) {
			c.fail(RuleHA, obj, "no required pod anti-affinity on %s selecting its own pods: two of them may share a node", HostnameKey)
		}
		zoned := antiAffine(ps.Affinity, own, ZoneKey, false)
		for _, t := range ps.TopologySpreadConstraints {
			if t.TopologyKey == ZoneKey && t.LabelSelector != nil && matches(t.LabelSelector, own) {
				zoned = true
			}
		}
		if !zoned {
			c.fail(RuleHA, obj, "not spread over zones (a topologySpreadConstraint or anti-affinity on %s)", ZoneKey)
		}
		for _, t := range s.Spec.VolumeClaimTemplates {
			if !slices.ContainsFunc(ps.Containers, func(ct corev1.Container) bool {
				return slices.ContainsFunc(ct.VolumeMounts, func(v corev1.VolumeMount) bool { return v.Name == t.Name })
			}) {
				c.fail(RuleHA, obj, "volumeClaimTemplate %s is mounted by no container", t.Name)
			}
		}
		if len(s.Spec.VolumeClaimTemplates) == 0 {
			c.fail(RuleHA, obj, "no volumeClaimTemplates: its data does not outlive the pod")
		}
		for _, ct := range ps.Containers {
			if ct.ReadinessProbe == nil || ct.LivenessProbe == nil {
				c.fail(RuleHA, obj+" container "+ct.Name, "no readiness or no liveness probe")
			}
		}
	}
	if m.StatefulSet(RedisName) != nil && len(m.RedisPeerPorts()) == 0 {
		c.fail(RuleHA, "StatefulSet/"+RedisName, "one Redis server, not a Redis Cluster or Sentinel set (no cluster-bus or sentinel port)")
	}
}

// antiAffine reports whether a has a pod anti-affinity term on topologyKey selecting own (in
// the pod's namespace); required says whether a preferred term counts too.
func antiAffine(a *corev1.Affinity, own map[string]string, topologyKey string, required bool) bool {
	if a == nil || a.PodAntiAffinity == nil {
		return false
	}
	terms := slices.Clone(a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution)
	if !required {
		for _, w := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
			terms = append(terms, w.PodAffinityTerm)
		}
	}
	return slices.ContainsFunc(terms, func(t corev1.PodAffinityTerm) bool {
		return t.TopologyKey == topologyKey && t.LabelSelector != nil && matches(t.LabelSelector, own) &&
			len(t.Namespaces) == 0 && t.NamespaceSelector == nil
	})
}

func ptrInt(p *int32) any {
	if p == nil {
		return "unset (1)"
	}
	return *p
}
