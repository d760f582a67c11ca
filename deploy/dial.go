package deploy

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ListenVars are the *_ADDR variables a service listens on; every other *_ADDR variable names a
// server the service dials (OUTBOX_MAILBOX_ADDR, GATEWAY_TRACKER_ADDR, ...), so a new client
// address is picked up by Dials without a change here. A new listen address must be added, or
// Check reports it as a dial address that names no Service.
var ListenVars = []string{"GRPC_ADDR", "OPS_ADDR", "GATEWAY_HTTP_ADDR", "TRACKER_JOURNAL_ADDR"}

// URLVars are the variables holding URLs (or host:port) of servers a service dials, beside the
// *_ADDR ones (docs/configuration.md, "Every service").
var URLVars = []string{"REDIS_URL", "NATS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "AUTH_JWKS_URL"}

// Unread are the dial variables a service's process never reads (cmd/postamt/serve.go: the
// gateway keeps no state and connects to neither Redis nor NATS). Setting one would hand the
// service a credential or a flow it has no use for, so Check reports it.
var Unread = map[string][]string{"gateway": {"REDIS_URL", "NATS_URL"}}

// Dial is one connection a service's configuration makes it open: the variable, and the server
// it names.
type Dial struct {
	// Service is the Deployment whose configuration names the server.
	Service string
	// Var is the environment variable, e.g. OUTBOX_TRACKER_ADDR.
	Var string
	// Address is the variable's value with any password masked, for messages.
	Address string
	// Host and Port are the server's; Port is the scheme's default when the URL names none.
	Host string
	Port int32
	// Local is set for an address that needs no network policy: a loopback address or a Unix
	// socket.
	Local bool
	// Topology is "cluster" for a Redis Cluster node (a seed of redis+cluster://, or one of its
	// addr= parameters), "sentinel" for a Redis Sentinel (redis+sentinel://), "" otherwise. A
	// Cluster client goes on to dial every node the seed names in CLUSTER SHARDS: the pods of the
	// seed's workload, on the same port, which the seed's flow covers. A Sentinel client goes on
	// to dial the data nodes the sentinels name: the pods of the sentinels' workload (each runs
	// redis beside its sentinel) on SentinelDataPort, which Check requires as well.
	Topology string
	// Err says why the value could not be read as an address.
	Err error
}

// isDialVar reports whether name is a variable naming a server to dial.
func isDialVar(name string) bool {
	if slices.Contains(URLVars, name) {
		return true
	}
	return strings.HasSuffix(name, "_ADDR") && !slices.Contains(ListenVars, name)
}

// Dials lists the servers the configuration of each Postamt service's Deployment names (its
// ConfigMaps and env values, as Env resolves them), sorted by service and variable.
func (m *Manifest) Dials() []Dial {
	var out []Dial
	for _, s := range Services {
		d := m.Deployment(s)
		if d == nil {
			continue
		}
		for i := range d.Spec.Template.Spec.Containers {
			env := m.Env(&d.Spec.Template.Spec.Containers[i])
			names := make([]string, 0, len(env))
			for k := range env {
				if isDialVar(k) {
					names = append(names, k)
				}
			}
			slices.Sort(names)
			for _, k := range names {
				if env[k] == "" {
					continue // an empty address turns the client off (OUTBOX_TRACKER_ADDR)
				}
				out = append(out, parseDial(s, k, env[k])...)
			}
		}
	}
	return out
}

// envRef is a $(VAR) reference the kubelet expands; a password spliced into a URL is one.
var envRef = regexp.MustCompile(`\$\([A-Za-z_][A-Za-z0-9_]*\)`)

// defaultPorts are the ports of the URL schemes the services accept when a URL names none.
var defaultPorts = map[string]int32{
	"redis": 6379, "rediss": 6379, "nats": 4222, "tls": 4222, "ws": 80, "wss": 443, "http": 80, "https": 443,
	"redis+cluster": 6379, "rediss+cluster": 6379, "redis+sentinel": 26379, "rediss+sentinel": 26379,
}

// Redis topologies of REDIS_URL (internal/redisx): a Cluster's seed nodes, or a Sentinel set.
const (
	TopologyCluster  = "cluster"
	TopologySentinel = "sentinel"
)

// redisTopologies maps the REDIS_URL schemes naming several servers to their topology. The URL's
// host and every addr= query parameter are servers of it:
//
//	redis+cluster://[user:pass@]host:port?addr=host2:port&addr=host3:port
//	redis+sentinel://[user:pass@]sentinel1:26379/0?master_name=NAME&addr=sentinel2:26379
var redisTopologies = map[string]string{
	"redis+cluster": TopologyCluster, "rediss+cluster": TopologyCluster,
	"redis+sentinel": TopologySentinel, "rediss+sentinel": TopologySentinel,
}

// SentinelDataPort is the port of the data nodes that a Sentinel names to its clients.
const SentinelDataPort = 6379

// parseDial reads one variable's value: host:port, a URL, or (NATS_URL) a comma-separated list of
// URLs, each of which is a Dial.
func parseDial(service, name, value string) []Dial {
	value = envRef.ReplaceAllString(value, "x")
	var parts []string
	if name == "NATS_URL" {
		for _, p := range strings.Split(value, ",") {
			parts = append(parts, strings.TrimSpace(p))
		}
	} else {
		parts = []string{value}
	}
	var out []Dial
	for _, p := range parts {
		if ds, ok := parseTopology(service, name, p); ok {
			out = append(out, ds...)
			continue
		}
		d := Dial{Service: service, Var: name, Address: p}
		hostPort := p
		if strings.Contains(p, "://") {
			u, err := url.Parse(p)
			if err != nil {
				d.Address = "(unparsable URL)"
				d.Err = fmt.Errorf("not a URL: %w", err)
				out = append(out, d)
				continue
			}
			d.Address = u.Redacted()
			if u.Scheme == "unix" {
				d.Local = true
				out = append(out, d)
				continue
			}
			hostPort = u.Host
			scheme := u.Scheme
			if u.Port() == "" {
				port, ok := defaultPorts[scheme]
				if !ok {
					d.Err = fmt.Errorf("URL names no port and scheme %q has no known default", scheme)
					out = append(out, d)
					continue
				}
				hostPort = net.JoinHostPort(u.Hostname(), strconv.Itoa(int(port)))
			}
		}
		out = append(out, setHostPort(d, hostPort))
	}
	return out
}

// setHostPort fills in d's Host and Port from host:port, or its Err.
func setHostPort(d Dial, hostPort string) Dial {
	host, port, err := net.SplitHostPort(hostPort)
	n, perr := strconv.ParseUint(port, 10, 16)
	switch {
	case err != nil || perr != nil || n == 0:
		d.Err = fmt.Errorf("want host:port")
	case host == "":
		d.Err = fmt.Errorf("names no host (a listen address? add it to deploy.ListenVars)")
	}
	d.Host, d.Port = host, int32(n)
	if a, err := netip.ParseAddr(host); (err == nil && a.IsLoopback()) || host == "localhost" {
		d.Local = true
	}
	return d
}

// parseTopology reads a URL of a Redis Cluster or Sentinel set (redisTopologies): one Dial for
// its host and one for each addr= parameter, each with the scheme's default port when it names
// none. ok is false for any other value.
func parseTopology(service, name, value string) (ds []Dial, ok bool) {
	scheme, _, found := strings.Cut(value, "://")
	topology := redisTopologies[scheme]
	if !found || topology == "" {
		return nil, false
	}
	d := Dial{Service: service, Var: name, Address: "(unparsable URL)", Topology: topology}
	u, err := url.Parse(value)
	if err != nil {
		d.Err = fmt.Errorf("not a URL: %w", err)
		return []Dial{d}, true
	}
	d.Address = u.Redacted()
	q := u.Query()
	if topology == TopologySentinel && q.Get("master_name") == "" {
		d.Err = fmt.Errorf("a Sentinel URL names its master set in master_name=")
		return []Dial{d}, true
	}
	hosts := append([]string{u.Host}, q["addr"]...)
	for _, h := range hosts {
		hd := d
		hd.Address = h + " of " + d.Address
		if h == "" {
			hd.Err = fmt.Errorf("names no host")
			ds = append(ds, hd)
			continue
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(strings.Trim(h, "[]"), strconv.Itoa(int(defaultPorts[scheme])))
		}
		ds = append(ds, setHostPort(hd, h))
	}
	return ds, true
}

// Target resolves the host and port of a Dial from a pod in namespace ns the way cluster DNS
// and kube-proxy would: a Service of m (by its name, or name.namespace[.svc[.cluster.local]]) is
// the pods of the workload it selects, on the container port its targetPort names; a
// StatefulSet pod's stable name (redis-0.redis-headless[.namespace[.svc[.cluster.local]]]) is
// that StatefulSet's pods, on the container port itself. An IP address is an Endpoint outside
// the cluster. ok is false for a name that is neither.
func (m *Manifest) Target(ns, host string, port int32) (to Endpoint, containerPort int32, ok bool) {
	if _, err := netip.ParseAddr(host); err == nil {
		return Endpoint{IP: host}, port, true
	}
	if to, cp, ok := m.podTarget(ns, strings.Split(strings.TrimSuffix(host, "."), "."), port); ok {
		return to, cp, true
	}
	name, rest, _ := strings.Cut(strings.TrimSuffix(host, "."), ".")
	if rest != "" {
		svcNS, suffix, _ := strings.Cut(rest, ".")
		if svcNS != ns || (suffix != "" && suffix != "svc" && suffix != "svc.cluster.local") {
			return Endpoint{}, 0, false
		}
	}
	for _, s := range m.Services {
		if s.Name != name || s.Namespace != ns || len(s.Spec.Selector) == 0 {
			continue
		}
		for _, sp := range s.Spec.Ports {
			if sp.Port != port || (sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP) {
				continue
			}
			sel := &metav1.LabelSelector{MatchLabels: s.Spec.Selector}
			for _, w := range m.Workloads() {
				if !matches(sel, w.Template.Labels) {
					continue
				}
				to := m.Pod(w.Name)
				switch tp := sp.TargetPort; {
				case tp.StrVal != "":
					for _, cp := range to.Ports {
						if cp.Name == tp.StrVal {
							return to, cp.ContainerPort, true
						}
					}
					return Endpoint{}, 0, false
				case tp.IntVal != 0:
					return to, tp.IntVal, true
				default:
					return to, sp.Port, true
				}
			}
		}
	}
	return Endpoint{}, 0, false
}

// podTarget resolves the stable DNS name of a StatefulSet's pod, POD.SERVICE[.NS[.svc[.cluster.local]]]
// (labels split at the dots), where SERVICE is the StatefulSet's headless governing Service and
// POD is NAME-ORDINAL with an ordinal below its replicas. The name reaches the pod itself, so the
// port must be one of its container ports.
func (m *Manifest) podTarget(ns string, labels []string, port int32) (Endpoint, int32, bool) {
	if len(labels) < 2 {
		return Endpoint{}, 0, false
	}
	switch rest := labels[2:]; {
	case len(rest) == 0:
	case rest[0] != ns:
		return Endpoint{}, 0, false
	case len(rest) > 1 && !slices.Equal(rest[1:], []string{"svc"}) && !slices.Equal(rest[1:], []string{"svc", "cluster", "local"}):
		return Endpoint{}, 0, false
	}
	for _, s := range m.StatefulSets {
		if s.Namespace != ns || s.Spec.ServiceName != labels[1] {
			continue
		}
		ord, ok := strings.CutPrefix(labels[0], s.Name+"-")
		n, err := strconv.Atoi(ord)
		replicas := 1
		if s.Spec.Replicas != nil {
			replicas = int(*s.Spec.Replicas)
		}
		if !ok || err != nil || n < 0 || n >= replicas || strconv.Itoa(n) != ord {
			continue
		}
		if !slices.ContainsFunc(m.Services, func(v *corev1.Service) bool {
			return v.Name == labels[1] && v.Namespace == ns && v.Spec.ClusterIP == corev1.ClusterIPNone
		}) {
			continue
		}
		to := m.Pod(s.Name)
		for _, cp := range to.Ports {
			if cp.ContainerPort == port && (cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP) {
				return to, port, true
			}
		}
	}
	return Endpoint{}, 0, false
}
