// Package deploy renders Postamt's Kubernetes manifests (k8s/ beside this file) with the
// kustomize API, decodes every object strictly into its k8s.io/api type, and checks the rules
// an operator relies on: selectors that select, gRPC probes on declared ports, the restricted
// pod security profile, a termination grace longer than the drain, pinned images, default-deny
// network policies, and flows derived from the addresses each service is configured to dial
// (dial.go), so that configuration and policies cannot drift apart. The tests run the checks on
// every overlay; nothing here talks to a cluster.
package deploy

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// Manifest is one rendered kustomization, every object decoded into its k8s.io/api type.
// Each field holds the objects of one kind, in the order kustomize emitted them.
type Manifest struct {
	// Namespaces are the v1 Namespaces (the overlays render theirs).
	Namespaces []*corev1.Namespace
	// ConfigMaps are the v1 ConfigMaps, generated ones with their hashed names.
	ConfigMaps []*corev1.ConfigMap
	// Secrets are the v1 Secrets rendered (dev generates its own; prod's are created by hand).
	Secrets []*corev1.Secret
	// Services are the v1 Services, headless ones included.
	Services []*corev1.Service
	// Deployments are the apps/v1 Deployments, one per Postamt service.
	Deployments []*appsv1.Deployment
	// StatefulSets are the apps/v1 StatefulSets (NATS, Redis).
	StatefulSets []*appsv1.StatefulSet
	// Jobs are the batch/v1 Jobs (prod: redis-cluster-init, which forms the Redis Cluster).
	Jobs []*batchv1.Job
	// PDBs are the policy/v1 PodDisruptionBudgets.
	PDBs []*policyv1.PodDisruptionBudget
	// HPAs are the autoscaling/v2 HorizontalPodAutoscalers.
	HPAs []*autoscalingv2.HorizontalPodAutoscaler
	// NetworkPolicies are the networking.k8s.io/v1 NetworkPolicies.
	NetworkPolicies []*networkingv1.NetworkPolicy
}

// Overlays lists the overlay directories under root/overlays (root is the k8s directory), sorted.
func Overlays(root string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(root, "overlays"))
	if err != nil {
		return nil, fmt.Errorf("list overlays: %w", err)
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, filepath.Join(root, "overlays", e.Name()))
		}
	}
	sort.Strings(dirs)
	return dirs, nil
}

// Render builds the kustomization in dir (as `kustomize build dir` does, from the disk) and
// decodes the result with Decode.
func Render(dir string) (*Manifest, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resMap, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	out, err := resMap.AsYaml()
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	m, err := Decode(out)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	return m, nil
}

// Decode splits a multi-document YAML stream and decodes each document into the k8s.io/api type
// of its apiVersion and kind. Decoding is strict: an unknown or misspelt field (field names are
// case-sensitive), a duplicate key, or a kind this package does not know is an error.
func Decode(stream []byte) (*Manifest, error) {
	m := &Manifest{}
	for i, doc := range splitYAML(stream) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(js, &tm); err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if err := m.add(tm, js); err != nil {
			return nil, fmt.Errorf("document %d (%s %s): %w", i, tm.APIVersion, tm.Kind, err)
		}
	}
	return m, nil
}

// add decodes js as the type tm names and files it.
func (m *Manifest) add(tm metav1.TypeMeta, js []byte) error {
	switch tm.APIVersion + " " + tm.Kind {
	case "v1 Namespace":
		return decodeInto(js, &m.Namespaces)
	case "v1 ConfigMap":
		return decodeInto(js, &m.ConfigMaps)
	case "v1 Secret":
		return decodeInto(js, &m.Secrets)
	case "v1 Service":
		return decodeInto(js, &m.Services)
	case "apps/v1 Deployment":
		return decodeInto(js, &m.Deployments)
	case "apps/v1 StatefulSet":
		return decodeInto(js, &m.StatefulSets)
	case "batch/v1 Job":
		return decodeInto(js, &m.Jobs)
	case "policy/v1 PodDisruptionBudget":
		return decodeInto(js, &m.PDBs)
	case "autoscaling/v2 HorizontalPodAutoscaler":
		return decodeInto(js, &m.HPAs)
	case "networking.k8s.io/v1 NetworkPolicy":
		return decodeInto(js, &m.NetworkPolicies)
	}
	return fmt.Errorf("unexpected kind: add it to deploy.Manifest with its k8s.io/api type")
}

func decodeInto[T any](js []byte, list *[]*T) error {
	v := new(T)
	if err := unmarshalStrict(js, v); err != nil {
		return err
	}
	*list = append(*list, v)
	return nil
}

// splitYAML splits a stream at its "---" document separators.
func splitYAML(stream []byte) [][]byte {
	var docs [][]byte
	var cur []byte
	for line := range bytes.Lines(stream) {
		if t := bytes.TrimRight(line, " \t\r\n"); bytes.Equal(t, []byte("---")) {
			docs = append(docs, cur)
			cur = nil
			continue
		}
		cur = append(cur, line...)
	}
	return append(docs, cur)
}

// Workload is what the checks need of a Deployment, StatefulSet or Job.
type Workload struct {
	// Kind is "Deployment", "StatefulSet" or "Job".
	Kind string
	// Name is the object's name.
	Name string
	// Selector is the workload's label selector; nil for a Job, whose selector the API server
	// generates.
	Selector *metav1.LabelSelector
	// Template is the pod template.
	Template *corev1.PodTemplateSpec
}

// Workloads lists the Deployments, then the StatefulSets, then the Jobs.
func (m *Manifest) Workloads() []Workload {
	var out []Workload
	for _, d := range m.Deployments {
		out = append(out, Workload{Kind: "Deployment", Name: d.Name, Selector: d.Spec.Selector, Template: &d.Spec.Template})
	}
	for _, s := range m.StatefulSets {
		out = append(out, Workload{Kind: "StatefulSet", Name: s.Name, Selector: s.Spec.Selector, Template: &s.Spec.Template})
	}
	for _, j := range m.Jobs {
		out = append(out, Workload{Kind: "Job", Name: j.Name, Template: &j.Spec.Template})
	}
	return out
}

// StatefulSet returns the rendered StatefulSet called name, or nil.
func (m *Manifest) StatefulSet(name string) *appsv1.StatefulSet {
	for _, s := range m.StatefulSets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// ConfigMap returns the rendered ConfigMap called name, or nil.
func (m *Manifest) ConfigMap(name string) *corev1.ConfigMap {
	for _, c := range m.ConfigMaps {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Deployment returns the rendered Deployment called name, or nil.
func (m *Manifest) Deployment(name string) *appsv1.Deployment {
	for _, d := range m.Deployments {
		if d.Name == name {
			return d
		}
	}
	return nil
}

// Env resolves a container's environment as the kubelet would for the variables given by value:
// the ConfigMaps of envFrom (those rendered here) in order, then env entries with a value.
// Variables from Secrets or field references are absent.
func (m *Manifest) Env(c *corev1.Container) map[string]string {
	env := map[string]string{}
	for _, src := range c.EnvFrom {
		if src.ConfigMapRef == nil {
			continue
		}
		if cm := m.ConfigMap(src.ConfigMapRef.Name); cm != nil {
			for k, v := range cm.Data {
				env[src.Prefix+k] = v
			}
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = e.Value
		}
	}
	return env
}
