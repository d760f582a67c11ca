package deploy

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Endpoint is one end of a connection for Allowed: a pod (Labels set) in a namespace, or an
// address outside the cluster (IP set).
type Endpoint struct {
	// Namespace is the pod's namespace; its kubernetes.io/metadata.name label is implied.
	Namespace string
	// NamespaceLabels are the namespace's other labels.
	NamespaceLabels map[string]string
	// Labels are the pod's labels; nil for an address outside the cluster.
	Labels map[string]string
	// Ports are the pod's container ports, which named ports in policies resolve against.
	Ports []corev1.ContainerPort
	// IP is the address of an endpoint outside the cluster.
	IP string
}

// Pod returns the Endpoint of the pods of the workload called name (nil Labels when there is
// none).
func (m *Manifest) Pod(name string) Endpoint {
	for _, w := range m.Workloads() {
		if w.Name != name {
			continue
		}
		var ports []corev1.ContainerPort
		for _, c := range w.Template.Spec.Containers {
			ports = append(ports, c.Ports...)
		}
		ns := m.namespaceOf(w.Kind, w.Name)
		return Endpoint{Namespace: ns, NamespaceLabels: m.namespaceLabels(ns), Labels: w.Template.Labels, Ports: ports}
	}
	return Endpoint{}
}

func (m *Manifest) namespaceOf(kind, name string) string {
	switch kind {
	case "Deployment":
		for _, d := range m.Deployments {
			if d.Name == name {
				return d.Namespace
			}
		}
	case "StatefulSet":
		for _, s := range m.StatefulSets {
			if s.Name == name {
				return s.Namespace
			}
		}
	case "Job":
		for _, j := range m.Jobs {
			if j.Name == name {
				return j.Namespace
			}
		}
	}
	return ""
}

func (m *Manifest) namespaceLabels(ns string) map[string]string {
	for _, n := range m.Namespaces {
		if n.Name == ns {
			return n.Labels
		}
	}
	return nil
}

// Allowed reports whether the manifest's NetworkPolicies let src open a connection to dst on
// port (protocol TCP or UDP), evaluated as Kubernetes does: a pod that no policy of its
// namespace selects for a direction is open in that direction; a selected one admits what some
// rule of those policies admits. Only the manifest's own policies count (a cluster may have
// more), and an ipBlock is taken to match only addresses outside the cluster.
func (m *Manifest) Allowed(src, dst Endpoint, port int32, protocol corev1.Protocol) bool {
	return m.Egress(src, dst, port, protocol) && m.Ingress(src, dst, port, protocol)
}

// Egress is the caller's half of Allowed: whether the policies of src's namespace let src open
// the connection (always, for an address outside the cluster). Check asks each half on its own,
// so that a rule one side grants and nobody needs is found even while the other side refuses.
func (m *Manifest) Egress(src, dst Endpoint, port int32, protocol corev1.Protocol) bool {
	return src.Labels == nil || m.admits(networkingv1.PolicyTypeEgress, src, dst, dst, port, protocol)
}

// Ingress is the callee's half of Allowed: whether the policies of dst's namespace let the
// connection in (always, for an address outside the cluster).
func (m *Manifest) Ingress(src, dst Endpoint, port int32, protocol corev1.Protocol) bool {
	return dst.Labels == nil || m.admits(networkingv1.PolicyTypeIngress, dst, src, dst, port, protocol)
}

// admits evaluates the policies of self's namespace in direction dir towards peer; target is
// the connection's destination, whose ports resolve named ports.
func (m *Manifest) admits(dir networkingv1.PolicyType, self, peer, target Endpoint, port int32, protocol corev1.Protocol) bool {
	selected := false
	for _, p := range m.NetworkPolicies {
		if p.Namespace != self.Namespace || !hasType(p, dir) || !matches(&p.Spec.PodSelector, self.Labels) {
			continue
		}
		selected = true
		if dir == networkingv1.PolicyTypeEgress {
			for _, r := range p.Spec.Egress {
				if peersMatch(r.To, p.Namespace, peer) && portsMatch(r.Ports, target, port, protocol) {
					return true
				}
			}
		} else {
			for _, r := range p.Spec.Ingress {
				if peersMatch(r.From, p.Namespace, peer) && portsMatch(r.Ports, target, port, protocol) {
					return true
				}
			}
		}
	}
	return !selected
}

// hasType reports whether p governs direction dir, with the API's defaulting of policyTypes.
func hasType(p *networkingv1.NetworkPolicy, dir networkingv1.PolicyType) bool {
	if len(p.Spec.PolicyTypes) == 0 {
		return dir == networkingv1.PolicyTypeIngress || len(p.Spec.Egress) > 0
	}
	for _, t := range p.Spec.PolicyTypes {
		if t == dir {
			return true
		}
	}
	return false
}

func peersMatch(peers []networkingv1.NetworkPolicyPeer, policyNS string, e Endpoint) bool {
	if len(peers) == 0 {
		return true
	}
	for _, peer := range peers {
		if peerMatches(peer, policyNS, e) {
			return true
		}
	}
	return false
}

func peerMatches(peer networkingv1.NetworkPolicyPeer, policyNS string, e Endpoint) bool {
	if peer.IPBlock != nil {
		if e.Labels != nil || e.IP == "" {
			return false
		}
		return inBlock(peer.IPBlock, e.IP)
	}
	if e.Labels == nil {
		return false
	}
	if peer.NamespaceSelector == nil {
		if e.Namespace != policyNS {
			return false
		}
	} else {
		nsLabels := map[string]string{"kubernetes.io/metadata.name": e.Namespace}
		for k, v := range e.NamespaceLabels {
			nsLabels[k] = v
		}
		if !matches(peer.NamespaceSelector, nsLabels) {
			return false
		}
	}
	return peer.PodSelector == nil || matches(peer.PodSelector, e.Labels)
}

func inBlock(b *networkingv1.IPBlock, ip string) bool {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	in := func(cidr string) bool {
		p, err := netip.ParsePrefix(cidr)
		return err == nil && p.Contains(addr)
	}
	if !in(b.CIDR) {
		return false
	}
	for _, ex := range b.Except {
		if in(ex) {
			return false
		}
	}
	return true
}

func portsMatch(ports []networkingv1.NetworkPolicyPort, target Endpoint, port int32, protocol corev1.Protocol) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		proto := corev1.ProtocolTCP
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		if proto != protocol {
			continue
		}
		switch {
		case p.Port == nil:
			return true
		case p.Port.StrVal != "":
			for _, cp := range target.Ports {
				if cp.Name == p.Port.StrVal && cp.ContainerPort == port {
					return true
				}
			}
		case p.EndPort != nil:
			if port >= p.Port.IntVal && port <= *p.EndPort {
				return true
			}
		case p.Port.IntVal == port:
			return true
		}
	}
	return false
}

// matches reports whether sel selects lbls; an invalid selector selects nothing.
func matches(sel *metav1.LabelSelector, lbls map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return false
	}
	return s.Matches(labels.Set(lbls))
}
