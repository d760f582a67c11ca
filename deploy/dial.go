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
var URLVars = []string{"REDIS_URL", "NATS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"}

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
}

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
		d := Dial{Service: service, Var: name, Address: p}
		hostPort, scheme := p, ""
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
			hostPort, scheme = u.Host, u.Scheme
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
		out = append(out, d)
	}
	return out
}

// Target resolves the host and port of a Dial from a pod in namespace ns the way cluster DNS
// and kube-proxy would: a Service of m (by its name, or name.namespace[.svc[.cluster.local]]) is
// the pods of the workload it selects, on the container port its targetPort names. An IP
// address is an Endpoint outside the cluster. ok is false for a name that is no Service of m.
func (m *Manifest) Target(ns, host string, port int32) (to Endpoint, containerPort int32, ok bool) {
	if _, err := netip.ParseAddr(host); err == nil {
		return Endpoint{IP: host}, port, true
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
