package charttest

import (
	"bytes"
	"cmp"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	gocmp "github.com/google/go-cmp/cmp"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"helm.sh/helm/v3/pkg/releaseutil"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the chart's crds/ from deploy/crds, and the rendered manifests in e2e/testdata")

const (
	chartDir = "../ambit"
	// crdSource is the single source of the CRDs; the chart's crds/
	// holds copies, because Helm loads symlinked files but logs a warning
	// about each on every command.
	crdSource = "../../crds"
	// renderedCopy is what the lab test (e2e/helm_test.go) applies: the
	// chart rendered with its defaults into istio-system. Ambit's own
	// module may not import Helm.
	renderedCopy = "../../../e2e/testdata/helm/ambit.yaml"
	namespace    = "istio-system"
)

// kubeVersion is the version the lab runs, within the chart's kubeVersion.
var kubeVersion = chartutil.KubeVersion{Version: "v1.31.4", Major: "1", Minor: "31"}

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	return ch
}

// rendered is the chart rendered for one namespace and set of values.
type rendered struct {
	objs []runtime.Object
	// text is the manifests in Helm's install order, as `helm template`
	// prints them.
	text string
}

// decoder decodes strictly: an unknown or duplicated field is an error,
// so a misspelt field in a template cannot pass unnoticed.
var decoder = serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

func render(t *testing.T, ns string, vals map[string]any) rendered {
	t.Helper()
	ch := loadChart(t)
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = kubeVersion
	values, err := chartutil.ToRenderValues(ch, vals, chartutil.ReleaseOptions{Name: "ambit", Namespace: ns, Revision: 1, IsInstall: true}, caps)
	if err != nil {
		t.Fatalf("values: %v", err)
	}
	files, err := engine.Engine{Strict: true}.Render(ch, values)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	hooks, manifests, err := releaseutil.SortManifests(files, caps.APIVersions, releaseutil.InstallOrder)
	if err != nil {
		t.Fatalf("sort manifests: %v", err)
	}
	if len(hooks) > 0 {
		t.Errorf("hooks: got %d, want none", len(hooks))
	}
	var r rendered
	var text strings.Builder
	for _, m := range manifests {
		obj, gvk, err := decoder.Decode([]byte(m.Content), nil, nil)
		if err != nil {
			t.Fatalf("decode %s: %v\n%s", m.Name, err, m.Content)
		}
		if mo, ok := obj.(metav1.Object); ok && !namespaced(gvk.Kind) && mo.GetNamespace() != "" {
			t.Errorf("%s %s: cluster-scoped but has namespace %q", gvk.Kind, mo.GetName(), mo.GetNamespace())
		}
		r.objs = append(r.objs, obj)
		fmt.Fprintf(&text, "---\n# Source: %s\n%s\n", m.Name, m.Content)
	}
	r.text = text.String()
	return r
}

func namespaced(kind string) bool {
	switch kind {
	case "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding":
		return false
	}
	return true
}

// get returns the object of type T named name.
func get[T interface {
	runtime.Object
	metav1.Object
}](t *testing.T, r rendered, name string) T {
	t.Helper()
	for _, o := range r.objs {
		if v, ok := o.(T); ok && v.GetName() == name {
			return v
		}
	}
	var zero T
	t.Fatalf("rendered chart: no %T named %q", zero, name)
	return zero
}

func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("pod spec: no container %q", name)
	return corev1.Container{}
}

// flagValue returns the value of --name=value in args.
func flagValue(t *testing.T, args []string, name string) string {
	t.Helper()
	var found []string
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			found = append(found, v)
		}
	}
	if len(found) != 1 {
		t.Fatalf("args %q: got %d --%s, want one", args, len(found), name)
	}
	return found[0]
}

func hasFlag(args []string, name string) bool {
	return slices.ContainsFunc(args, func(a string) bool { return a == "--"+name || strings.HasPrefix(a, "--"+name+"=") })
}

// mountedFile finds which volume provides the file at path in the
// container, and the file's path inside that volume.
func mountedFile(t *testing.T, c corev1.Container, path string) (volume, sub string) {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if rel, ok := strings.CutPrefix(path, m.MountPath+"/"); ok {
			return m.Name, rel
		}
	}
	t.Fatalf("container %s: %s is under no volume mount", c.Name, path)
	return "", ""
}

func volume(t *testing.T, spec corev1.PodSpec, name string) corev1.Volume {
	t.Helper()
	for _, v := range spec.Volumes {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("pod spec: no volume %q", name)
	return corev1.Volume{}
}

func probe(t *testing.T, c corev1.Container) (path string, port int32) {
	t.Helper()
	p := c.ReadinessProbe
	if p == nil || p.HTTPGet == nil {
		t.Fatalf("container %s: readiness probe %+v, want httpGet", c.Name, p)
	}
	return p.HTTPGet.Path, p.HTTPGet.Port.IntVal
}

// env returns a container's environment: values, and "field <path>"
// for downward-API fields.
func env(c corev1.Container) map[string]string {
	m := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			m[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil:
			m[e.Name] = "field " + e.ValueFrom.FieldRef.FieldPath
		default:
			m[e.Name] = "other source"
		}
	}
	return m
}

func ports(c corev1.Container) []int32 {
	var ps []int32
	for _, p := range c.Ports {
		ps = append(ps, p.ContainerPort)
	}
	return ps
}

func TestChartMetadata(t *testing.T) {
	ch := loadChart(t)
	if err := ch.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		version string
		want    bool
	}{{"v1.29.9", false}, {"v1.30.0", true}, {kubeVersion.Version, true}} {
		if got := chartutil.IsCompatibleRange(ch.Metadata.KubeVersion, tc.version); got != tc.want {
			t.Errorf("kubeVersion %q with Kubernetes %s: got compatible %t, want %t", ch.Metadata.KubeVersion, tc.version, got, tc.want)
		}
	}
}

// TestLint runs Helm's own linter (helm lint): no warnings, no errors.
func TestLint(t *testing.T) {
	l := lint.AllWithKubeVersion(chartDir, nil, namespace, &kubeVersion)
	for _, m := range l.Messages {
		if m.Severity >= support.WarningSev {
			t.Errorf("helm lint: %v", m)
		}
	}
}

// TestCRDs checks that the chart's crds/ holds exactly deploy/crds.
func TestCRDs(t *testing.T) {
	src, err := filepath.Glob(filepath.Join(crdSource, "*.yaml"))
	if err != nil || len(src) == 0 {
		t.Fatalf("CRDs in %s: got %d (%v), want some", crdSource, len(src), err)
	}
	want := map[string]string{}
	for _, f := range src {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		want["crds/"+filepath.Base(f)] = string(b)
	}
	if *update {
		old, _ := filepath.Glob(filepath.Join(chartDir, "crds", "*"))
		for _, f := range old {
			if err := os.Remove(f); err != nil {
				t.Fatal(err)
			}
		}
		for name, data := range want {
			if err := os.WriteFile(filepath.Join(chartDir, name), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	got := map[string]string{}
	for _, f := range loadChart(t).CRDObjects() {
		got[f.Name] = string(f.File.Data)
	}
	if diff := gocmp.Diff(want, got); diff != "" {
		t.Errorf("chart crds/ differ from deploy/crds (go test -update copies them) (-want +got):\n%s", diff)
	}
}

// TestRenderedCopy keeps e2e/testdata/helm/ambit.yaml equal to the chart
// rendered with its defaults.
func TestRenderedCopy(t *testing.T) {
	r := render(t, namespace, nil)
	text := "# Code generated by deploy/charts/charttest (go test -update) from the chart\n" +
		"# with its default values in namespace " + namespace + ". DO NOT EDIT.\n" + r.text
	if *update {
		if err := os.MkdirAll(filepath.Dir(renderedCopy), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(renderedCopy, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(renderedCopy)
	if err != nil {
		t.Fatalf("read rendered copy (go test -update writes it): %v", err)
	}
	if diff := gocmp.Diff(text, string(got)); diff != "" {
		t.Errorf("%s is not the chart rendered (go test -update rewrites it) (-want +got):\n%s", renderedCopy, diff)
	}
}

type objKey struct{ kind, namespace, name string }

func keys(r rendered) []objKey {
	var ks []objKey
	for _, o := range r.objs {
		m := o.(metav1.Object)
		ks = append(ks, objKey{fmt.Sprintf("%T", o), m.GetNamespace(), m.GetName()})
	}
	slices.SortFunc(ks, func(a, b objKey) int {
		return cmp.Or(strings.Compare(a.kind, b.kind), strings.Compare(a.namespace, b.namespace), strings.Compare(a.name, b.name))
	})
	return ks
}

func TestObjects(t *testing.T) {
	ns := namespace
	want := []objKey{
		{"*v1.ClusterRole", "", "ambit-cni-agent"},
		{"*v1.ClusterRole", "", "ambit-cni-plugin"},
		{"*v1.ClusterRole", "", "ambit-istiod"},
		{"*v1.ClusterRoleBinding", "", "ambit-cni-agent"},
		{"*v1.ClusterRoleBinding", "", "ambit-cni-plugin"},
		{"*v1.ClusterRoleBinding", "", "ambit-istiod"},
		{"*v1.ConfigMap", ns, "istio"},
		{"*v1.DaemonSet", ns, "ambit-cni-agent"},
		{"*v1.DaemonSet", ns, "ztunnel"},
		{"*v1.Deployment", ns, "istiod"},
		{"*v1.Role", ns, "ambit-cni-agent"},
		{"*v1.Role", ns, "ambit-istiod"},
		{"*v1.RoleBinding", ns, "ambit-cni-agent"},
		{"*v1.RoleBinding", ns, "ambit-istiod"},
		{"*v1.Service", ns, "istiod"},
		{"*v1.ServiceAccount", ns, "ambit-cni-agent"},
		{"*v1.ServiceAccount", ns, "ambit-cni-plugin"},
		{"*v1.ServiceAccount", ns, "istiod"},
		{"*v1.ServiceAccount", ns, "ztunnel"},
		{"*v1.ValidatingAdmissionPolicy", "", "ambit-cni-agent"},
		{"*v1.ValidatingAdmissionPolicy", "", "ambit-istiod"},
		{"*v1.ValidatingAdmissionPolicyBinding", "", "ambit-cni-agent"},
		{"*v1.ValidatingAdmissionPolicyBinding", "", "ambit-istiod"},
	}
	if diff := gocmp.Diff(want, keys(render(t, ns, nil)), gocmp.AllowUnexported(objKey{})); diff != "" {
		t.Errorf("objects (-want +got):\n%s", diff)
	}
	off := keys(render(t, ns, map[string]any{"admissionPolicies": map[string]any{"enabled": false}}))
	if slices.ContainsFunc(off, func(k objKey) bool { return strings.Contains(k.kind, "ValidatingAdmissionPolicy") }) {
		t.Errorf("admissionPolicies.enabled=false: got admission policies in %v, want none", off)
	}
	// Without Ambit's istiod (beside Istio's, say): the data plane only,
	// and nothing that would stand in the way of another istiod running
	// as istiod (the admission policy refused Istio's leader election).
	dataPlane := []objKey{
		{"*v1.ClusterRole", "", "ambit-cni-agent"},
		{"*v1.ClusterRole", "", "ambit-cni-plugin"},
		{"*v1.ClusterRoleBinding", "", "ambit-cni-agent"},
		{"*v1.ClusterRoleBinding", "", "ambit-cni-plugin"},
		{"*v1.DaemonSet", ns, "ambit-cni-agent"},
		{"*v1.DaemonSet", ns, "ztunnel"},
		{"*v1.Role", ns, "ambit-cni-agent"},
		{"*v1.RoleBinding", ns, "ambit-cni-agent"},
		{"*v1.ServiceAccount", ns, "ambit-cni-agent"},
		{"*v1.ServiceAccount", ns, "ambit-cni-plugin"},
		{"*v1.ServiceAccount", ns, "ztunnel"},
		{"*v1.ValidatingAdmissionPolicy", "", "ambit-cni-agent"},
		{"*v1.ValidatingAdmissionPolicyBinding", "", "ambit-cni-agent"},
	}
	if diff := gocmp.Diff(dataPlane, keys(render(t, ns, map[string]any{"istiod": map[string]any{"enabled": false}})), gocmp.AllowUnexported(objKey{})); diff != "" {
		t.Errorf("istiod.enabled=false: objects (-want +got):\n%s", diff)
	}
}

// TestRBAC pins every rule: a change to what a component may do must
// change this test, and the lab test proves the rules are enough.
func TestRBAC(t *testing.T) {
	r := render(t, "mesh", nil)
	core, names := []string{""}, func(n ...string) []string { return n }
	wantIstiod := []rbacv1.PolicyRule{
		{APIGroups: core, Resources: names("namespaces", "pods", "services", "serviceaccounts", "nodes"), Verbs: names("list", "watch")},
		{APIGroups: names("discovery.k8s.io"), Resources: names("endpointslices"), Verbs: names("list", "watch")},
		{APIGroups: names("security.istio.io"), Resources: names("authorizationpolicies", "peerauthentications"), Verbs: names("get", "list", "watch")},
		{APIGroups: names("security.istio.io"), Resources: names("authorizationpolicies/status", "peerauthentications/status"), Verbs: names("update")},
		{APIGroups: names("networking.istio.io"), Resources: names("virtualservices", "destinationrules"), Verbs: names("get", "list", "watch")},
		{APIGroups: names("networking.istio.io"), Resources: names("virtualservices/status", "destinationrules/status"), Verbs: names("update")},
		{APIGroups: names("telemetry.istio.io"), Resources: names("telemetries"), Verbs: names("list", "watch")},
		{APIGroups: core, Resources: names("configmaps"), ResourceNames: names("istio-ca-root-cert"), Verbs: names("get", "list", "watch", "update")},
		{APIGroups: core, Resources: names("configmaps"), Verbs: names("list", "watch")},
		{APIGroups: core, Resources: names("configmaps"), Verbs: names("create")},
		{APIGroups: names("gateway.networking.k8s.io"), Resources: names("gatewayclasses"), Verbs: names("list", "watch", "create")},
		{APIGroups: names("gateway.networking.k8s.io"), Resources: names("gateways", "httproutes", "grpcroutes", "referencegrants"), Verbs: names("list", "watch")},
		{APIGroups: names("gateway.networking.k8s.io"), Resources: names("gatewayclasses/status", "gateways/status", "httproutes/status", "grpcroutes/status"), Verbs: names("update")},
		{APIGroups: core, Resources: names("serviceaccounts", "services"), Verbs: names("create", "patch", "delete")},
		{APIGroups: names("apps"), Resources: names("deployments"), Verbs: names("list", "watch", "create", "patch", "delete")},
		{APIGroups: names("autoscaling"), Resources: names("horizontalpodautoscalers"), Verbs: names("create", "patch", "delete")},
		{APIGroups: names("policy"), Resources: names("poddisruptionbudgets"), Verbs: names("create", "patch", "delete")},
		{APIGroups: core, Resources: names("services/status"), Verbs: names("patch")},
		{APIGroups: names("events.k8s.io"), Resources: names("events"), Verbs: names("create", "patch")},
		{APIGroups: names("authentication.k8s.io"), Resources: names("tokenreviews"), Verbs: names("create")},
	}
	if diff := gocmp.Diff(wantIstiod, get[*rbacv1.ClusterRole](t, r, "ambit-istiod").Rules); diff != "" {
		t.Errorf("istiod's ClusterRole (-want +got):\n%s", diff)
	}
	wantSecrets := []rbacv1.PolicyRule{
		{APIGroups: core, Resources: names("secrets"), ResourceNames: names("cacerts", "istio-ca-secret"), Verbs: names("get")},
		{APIGroups: core, Resources: names("secrets"), Verbs: names("create")},
	}
	role := get[*rbacv1.Role](t, r, "ambit-istiod")
	if diff := gocmp.Diff(wantSecrets, role.Rules); diff != "" {
		t.Errorf("istiod's Role (-want +got):\n%s", diff)
	}
	if role.Namespace != "mesh" {
		t.Errorf("istiod's Role: got namespace %q, want the release's, mesh", role.Namespace)
	}
	wantAgent := []rbacv1.PolicyRule{
		{APIGroups: core, Resources: names("pods", "namespaces"), Verbs: names("get", "list", "watch")},
		{APIGroups: core, Resources: names("pods"), Verbs: names("patch")},
	}
	if diff := gocmp.Diff(wantAgent, get[*rbacv1.ClusterRole](t, r, "ambit-cni-agent").Rules); diff != "" {
		t.Errorf("node agent's ClusterRole (-want +got):\n%s", diff)
	}
	// Its own DaemonSet only, to take Ambit out of the node when the
	// DaemonSet is deleted; tokens of the plugin's account only.
	wantAgentRole := []rbacv1.PolicyRule{
		{APIGroups: names("apps"), Resources: names("daemonsets"), ResourceNames: names("ambit-cni-agent"), Verbs: names("get", "list", "watch")},
		{APIGroups: core, Resources: names("serviceaccounts/token"), ResourceNames: names("ambit-cni-plugin"), Verbs: names("create")},
	}
	agentRole := get[*rbacv1.Role](t, r, "ambit-cni-agent")
	if diff := gocmp.Diff(wantAgentRole, agentRole.Rules); diff != "" {
		t.Errorf("node agent's Role (-want +got):\n%s", diff)
	}
	if agentRole.Namespace != "mesh" {
		t.Errorf("node agent's Role: got namespace %q, want the release's, mesh", agentRole.Namespace)
	}
	// The CNI plugin reads the new pod and its namespace, nothing more.
	wantPlugin := []rbacv1.PolicyRule{
		{APIGroups: core, Resources: names("pods", "namespaces"), Verbs: names("get")},
	}
	if diff := gocmp.Diff(wantPlugin, get[*rbacv1.ClusterRole](t, r, "ambit-cni-plugin").Rules); diff != "" {
		t.Errorf("CNI plugin's ClusterRole (-want +got):\n%s", diff)
	}

	// Every binding names a rendered role and a rendered service account;
	// ztunnel is bound to nothing.
	bound := map[string]string{} // service account → role
	check := func(kind, name string, ref rbacv1.RoleRef, subjects []rbacv1.Subject) {
		switch ref.Kind {
		case "ClusterRole":
			get[*rbacv1.ClusterRole](t, r, ref.Name)
		case "Role":
			get[*rbacv1.Role](t, r, ref.Name)
		default:
			t.Errorf("%s %s: roleRef kind %q", kind, name, ref.Kind)
		}
		for _, s := range subjects {
			if s.Kind != "ServiceAccount" || s.Namespace != "mesh" {
				t.Errorf("%s %s: subject %+v, want a service account in mesh", kind, name, s)
			}
			get[*corev1.ServiceAccount](t, r, s.Name)
			bound[s.Name] = ref.Kind + "/" + ref.Name
		}
	}
	for _, o := range r.objs {
		switch b := o.(type) {
		case *rbacv1.ClusterRoleBinding:
			check("ClusterRoleBinding", b.Name, b.RoleRef, b.Subjects)
		case *rbacv1.RoleBinding:
			check("RoleBinding", b.Name, b.RoleRef, b.Subjects)
		}
	}
	if got, ok := bound["ztunnel"]; ok {
		t.Errorf("ztunnel: bound to %s, want no role (it never calls the API)", got)
	}
	for _, sa := range []string{"istiod", "ambit-cni-agent", "ambit-cni-plugin"} {
		if _, ok := bound[sa]; !ok {
			t.Errorf("service account %s: bound to nothing", sa)
		}
	}
}

func TestIstiod(t *testing.T) {
	r := render(t, namespace, nil)
	d := get[*appsv1.Deployment](t, r, "istiod")
	spec := d.Spec.Template.Spec
	if spec.ServiceAccountName != "istiod" {
		t.Errorf("service account: got %q, want istiod", spec.ServiceAccountName)
	}
	if spec.HostNetwork {
		t.Error("istiod: got hostNetwork, want the pod network")
	}
	c := container(t, spec, "discovery")
	if got := c.Image; got != "localhost:5000/ambit/istiod:0.1.0" {
		t.Errorf("image: got %q, want localhost:5000/ambit/istiod:0.1.0", got)
	}
	// No plaintext xDS (15010) by default, as Istio recommends in
	// production.
	if diff := gocmp.Diff([]int32{15012, 15014}, ports(c)); diff != "" {
		t.Errorf("ports (-want +got):\n%s", diff)
	}
	if path, port := probe(t, c); path != "/ready" || port != 15014 {
		t.Errorf("readiness: got %s on %d, want /ready on 15014", path, port)
	}
	for flag, want := range map[string]string{
		"secure-addr": ":15012", "monitoring-addr": ":15014",
		"ca-namespace": namespace, "node-agent": namespace + "/ztunnel", "dns-name": "istiod." + namespace + ".svc",
		"root-namespace": namespace, "trust-domain": "cluster.local", "cluster-id": "Kubernetes",
		"domain-suffix": "cluster.local", "cert-ttl": "24h",
		"waypoint-image": "localhost:5000/ambit/waypoint:0.1.0", "waypoint-image-pull-policy": "IfNotPresent",
		"waypoint-istiod-address": "istiod." + namespace + ".svc:15012",
	} {
		if got := flagValue(t, c.Args, flag); got != want {
			t.Errorf("--%s: got %q, want %q", flag, got, want)
		}
	}
	for _, f := range []string{"kubeconfig", "no-policies", "network", "max-cert-ttl", "debug", "xds-addr", "debug-endpoints", "gateway-api"} {
		if hasFlag(c.Args, f) {
			t.Errorf("args %q: got --%s, want it unset by default", c.Args, f)
		}
	}
	// No privilege at all.
	ps, cs := spec.SecurityContext, c.SecurityContext
	if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot {
		t.Errorf("pod security context %+v: want runAsNonRoot", ps)
	}
	if cs == nil || cs.Capabilities == nil || !slices.Equal(cs.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(cs.Capabilities.Add) > 0 ||
		cs.ReadOnlyRootFilesystem == nil || !*cs.ReadOnlyRootFilesystem || cs.AllowPrivilegeEscalation == nil || *cs.AllowPrivilegeEscalation {
		t.Errorf("container security context %+v: want no capabilities, read-only root, no privilege escalation", cs)
	}

	svc := get[*corev1.Service](t, r, "istiod")
	var sp []int32
	for _, p := range svc.Spec.Ports {
		sp = append(sp, p.Port)
		if p.TargetPort.IntVal != p.Port {
			t.Errorf("service port %d: target %v, want the same port", p.Port, p.TargetPort)
		}
	}
	if diff := gocmp.Diff([]int32{15012, 15014}, sp); diff != "" {
		t.Errorf("service ports (-want +got):\n%s", diff)
	}
	for k, v := range svc.Spec.Selector {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("service selector %s=%s: not a label of istiod's pods %v", k, v, d.Spec.Template.Labels)
		}
	}
}

func TestZtunnel(t *testing.T) {
	r := render(t, namespace, nil)
	ds := get[*appsv1.DaemonSet](t, r, "ztunnel")
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("network: got hostNetwork %t, dnsPolicy %q, want true, ClusterFirstWithHostNet", spec.HostNetwork, spec.DNSPolicy)
	}
	// istiod trusts <namespace>/ztunnel as node agent; ztunnel holds no
	// API token.
	if spec.ServiceAccountName != "ztunnel" {
		t.Errorf("service account: got %q, want ztunnel", spec.ServiceAccountName)
	}
	if a := spec.AutomountServiceAccountToken; a == nil || *a {
		t.Errorf("automountServiceAccountToken: got %v, want false", a)
	}
	if a := get[*corev1.ServiceAccount](t, r, "ztunnel").AutomountServiceAccountToken; a == nil || *a {
		t.Errorf("service account ztunnel: automountServiceAccountToken %v, want false", a)
	}
	c := container(t, spec, "istio-proxy")
	if got := c.Image; got != "localhost:5000/ambit/ztunnel:0.1.0" {
		t.Errorf("image: got %q, want localhost:5000/ambit/ztunnel:0.1.0", got)
	}
	istiod := "istiod." + namespace + ".svc:15012"
	for flag, want := range map[string]string{
		"xds-address": istiod, "ca-address": istiod,
		"xds-root-cert": "/var/run/secrets/istio/root-cert.pem", "ca-root-cert": "/var/run/secrets/istio/root-cert.pem",
		"xds-token": "/var/run/secrets/tokens/istio-token", "ca-token": "/var/run/secrets/tokens/istio-token",
		"drain-timeout": "30s", "log-level": "info",
	} {
		if got := flagValue(t, c.Args, flag); got != want {
			t.Errorf("--%s: got %q, want %q", flag, got, want)
		}
	}
	if got, want := spec.TerminationGracePeriodSeconds, int64(35); got == nil || *got != want {
		t.Errorf("terminationGracePeriodSeconds: got %v, want %d (drain and 5 s)", got, want)
	}

	// The token file: a projected token of audience istio-ca.
	vol, sub := mountedFile(t, c, flagValue(t, c.Args, "ca-token"))
	v := volume(t, spec, vol)
	if v.Projected == nil || len(v.Projected.Sources) != 1 || v.Projected.Sources[0].ServiceAccountToken == nil {
		t.Fatalf("volume %s: %+v, want one projected service account token", vol, v.VolumeSource)
	}
	tok := v.Projected.Sources[0].ServiceAccountToken
	if tok.Audience != "istio-ca" || tok.Path != sub || tok.ExpirationSeconds == nil || *tok.ExpirationSeconds != 43200 {
		t.Errorf("token: got audience %q, path %q, expiration %v; want istio-ca, %s, 43200", tok.Audience, tok.Path, tok.ExpirationSeconds, sub)
	}
	// The root: key root-cert.pem of the ConfigMap istiod publishes.
	vol, sub = mountedFile(t, c, flagValue(t, c.Args, "ca-root-cert"))
	v = volume(t, spec, vol)
	if v.ConfigMap == nil || v.ConfigMap.Name != "istio-ca-root-cert" || sub != "root-cert.pem" {
		t.Errorf("root cert: volume %+v file %q, want key root-cert.pem of ConfigMap istio-ca-root-cert", v.VolumeSource, sub)
	}
	for _, m := range c.VolumeMounts {
		if !m.ReadOnly {
			t.Errorf("mount %s: got writable, want read-only", m.Name)
		}
	}

	// What ztunnel reads from its environment (ztunnel/cmd/ztunnel).
	wantEnv := map[string]string{
		"NODE_NAME": "field spec.nodeName", "POD_NAME": "field metadata.name", "POD_NAMESPACE": "field metadata.namespace",
		"INSTANCE_IP": "field status.podIP", "CLUSTER_ID": "Kubernetes", "CLUSTER_DOMAIN": "cluster.local",
	}
	if diff := gocmp.Diff(wantEnv, env(c)); diff != "" {
		t.Errorf("env (-want +got):\n%s", diff)
	}
	if path, port := probe(t, c); path != "/healthz/ready" || port != 15021 {
		t.Errorf("readiness: got %s on %d, want /healthz/ready on 15021", path, port)
	}
	// Declared ports of a host-network pod are host ports, which would
	// keep the upgrade's surge pod off the node.
	if got := ports(c); len(got) != 0 {
		t.Errorf("ports: got %v, want none declared (they would block the surge pod)", got)
	}
	if ru := ds.Spec.UpdateStrategy.RollingUpdate; ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ru == nil ||
		ru.MaxSurge == nil || ru.MaxSurge.IntValue() != 1 || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("update strategy: got %+v, want RollingUpdate with maxSurge 1, maxUnavailable 0", ds.Spec.UpdateStrategy)
	}
	if lp := c.LivenessProbe; lp == nil || lp.HTTPGet == nil || lp.HTTPGet.Path != "/healthz/live" || lp.HTTPGet.Port.IntVal != 15022 ||
		lp.PeriodSeconds*lp.FailureThreshold < 60 {
		t.Errorf("liveness: got %+v, want /healthz/live on 15022, its own listener, failing only after a minute or more", lp)
	}
	cs := c.SecurityContext
	if cs == nil || cs.Privileged == nil || *cs.Privileged || cs.Capabilities == nil ||
		!slices.Equal(cs.Capabilities.Drop, []corev1.Capability{"ALL"}) || !slices.Equal(cs.Capabilities.Add, []corev1.Capability{"NET_ADMIN"}) ||
		cs.ReadOnlyRootFilesystem == nil || !*cs.ReadOnlyRootFilesystem {
		t.Errorf("security context %+v: want unprivileged, only NET_ADMIN, read-only root", cs)
	}
	if !slices.ContainsFunc(spec.Tolerations, func(tl corev1.Toleration) bool { return tl.Operator == corev1.TolerationOpExists && tl.Key == "" }) {
		t.Errorf("tolerations %+v: want one that tolerates every taint", spec.Tolerations)
	}
}

func TestCNIAgent(t *testing.T) {
	r := render(t, namespace, nil)
	ds := get[*appsv1.DaemonSet](t, r, "ambit-cni-agent")
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("hostNetwork: got false, want true")
	}
	if spec.ServiceAccountName != "ambit-cni-agent" {
		t.Errorf("service account: got %q, want ambit-cni-agent", spec.ServiceAccountName)
	}
	c := container(t, spec, "agent")
	if got := c.Image; got != "localhost:5000/ambit/ambit-cni:0.1.0" {
		t.Errorf("image: got %q, want localhost:5000/ambit/ambit-cni:0.1.0", got)
	}
	wantArgs := map[string]string{
		"cni-conf-dir": "/etc/cni/net.d", "cni-bin-dir": "/opt/cni/bin", "pin-dir": "/sys/fs/bpf/ambit",
		"socket": "/var/run/ambit/cni.sock", "monitor-addr": ":15029",
		"daemonset": namespace + "/ambit-cni-agent",
	}
	for flag, want := range wantArgs {
		if got := flagValue(t, c.Args, flag); got != want {
			t.Errorf("--%s: got %q, want %q", flag, got, want)
		}
	}
	// The uplink is found from the node's address (HOST_IP, below)
	// unless set.
	if hasFlag(c.Args, "uplink") {
		t.Errorf("args %q: got --uplink by default, want it found from HOST_IP", c.Args)
	}
	set := container(t, get[*appsv1.DaemonSet](t, render(t, namespace, map[string]any{"cni": map[string]any{"uplink": "ens5"}}), "ambit-cni-agent").Spec.Template.Spec, "agent")
	if got := flagValue(t, set.Args, "uplink"); got != "ens5" {
		t.Errorf("--uplink with cni.uplink=ens5: got %q, want ens5", got)
	}
	// Paths the agent writes into the conflist are read on the host: the
	// directories must be the host's, at the same paths.
	wantHost := map[string]string{
		"/etc/cni/net.d": "/etc/cni/net.d", "/opt/cni/bin": "/opt/cni/bin", "/var/run/ambit": "/var/run/ambit",
		"/sys/fs/bpf": "/sys/fs/bpf", "/run/xtables.lock": "/run/xtables.lock",
	}
	gotHost := map[string]string{}
	for _, m := range c.VolumeMounts {
		v := volume(t, spec, m.Name)
		if v.HostPath == nil {
			t.Errorf("mount %s: volume %+v, want a hostPath", m.Name, v.VolumeSource)
			continue
		}
		gotHost[m.MountPath] = v.HostPath.Path
	}
	if diff := gocmp.Diff(wantHost, gotHost); diff != "" {
		t.Errorf("host mounts, container path → host path (-want +got):\n%s", diff)
	}
	for _, f := range []string{"cni-conf-dir", "cni-bin-dir", "pin-dir", "socket"} {
		mountedFile(t, c, flagValue(t, c.Args, f)+"/x")
	}
	if path, port := probe(t, c); path != "/readyz" || port != 15029 {
		t.Errorf("readiness: got %s on %d, want /readyz on 15029", path, port)
	}
	if diff := gocmp.Diff(map[string]string{"NODE_NAME": "field spec.nodeName", "HOST_IP": "field status.hostIP"}, env(c)); diff != "" {
		t.Errorf("env (-want +got):\n%s", diff)
	}
	cs := c.SecurityContext
	if cs == nil || cs.Privileged == nil || *cs.Privileged || cs.Capabilities == nil ||
		!slices.Equal(cs.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		!slices.Equal(cs.Capabilities.Add, []corev1.Capability{"BPF", "PERFMON", "NET_ADMIN", "NET_RAW"}) {
		t.Errorf("security context %+v: want unprivileged with only BPF, PERFMON, NET_ADMIN, NET_RAW", cs)
	}
}

func TestAdmissionPolicies(t *testing.T) {
	r := render(t, "mesh", nil)
	for name, user := range map[string]string{
		"ambit-cni-agent": "system:serviceaccount:mesh:ambit-cni-agent",
		"ambit-istiod":    "system:serviceaccount:mesh:istiod",
	} {
		p := get[*admissionv1.ValidatingAdmissionPolicy](t, r, name)
		if len(p.Spec.MatchConditions) != 1 || !strings.Contains(p.Spec.MatchConditions[0].Expression, `"`+user+`"`) {
			t.Errorf("policy %s: match conditions %+v, want one for user %s", name, p.Spec.MatchConditions, user)
		}
		if p.Spec.FailurePolicy == nil || *p.Spec.FailurePolicy != admissionv1.Fail {
			t.Errorf("policy %s: failurePolicy %v, want Fail", name, p.Spec.FailurePolicy)
		}
		b := get[*admissionv1.ValidatingAdmissionPolicyBinding](t, r, name)
		if b.Spec.PolicyName != name || !slices.Equal(b.Spec.ValidationActions, []admissionv1.ValidationAction{admissionv1.Deny}) {
			t.Errorf("binding %s: policy %q actions %v, want %s, [Deny]", name, b.Spec.PolicyName, b.Spec.ValidationActions, name)
		}
	}
}

// TestValues renders with overrides and checks that each lands where it
// should.
func TestValues(t *testing.T) {
	type check func(t *testing.T, r rendered)
	arg := func(kind, name, ctr, flag, want string) check {
		return func(t *testing.T, r rendered) {
			t.Helper()
			var spec corev1.PodSpec
			if kind == "Deployment" {
				spec = get[*appsv1.Deployment](t, r, name).Spec.Template.Spec
			} else {
				spec = get[*appsv1.DaemonSet](t, r, name).Spec.Template.Spec
			}
			if got := flagValue(t, container(t, spec, ctr).Args, flag); got != want {
				t.Errorf("%s --%s: got %q, want %q", name, flag, got, want)
			}
		}
	}
	image := func(kind, name, ctr, want string) check {
		return func(t *testing.T, r rendered) {
			t.Helper()
			var spec corev1.PodSpec
			if kind == "Deployment" {
				spec = get[*appsv1.Deployment](t, r, name).Spec.Template.Spec
			} else {
				spec = get[*appsv1.DaemonSet](t, r, name).Spec.Template.Spec
			}
			if got := container(t, spec, ctr).Image; got != want {
				t.Errorf("%s image: got %q, want %q", name, got, want)
			}
		}
	}
	hostPath := func(vol, want string) check {
		return func(t *testing.T, r rendered) {
			t.Helper()
			spec := get[*appsv1.DaemonSet](t, r, "ambit-cni-agent").Spec.Template.Spec
			if got := volume(t, spec, vol).HostPath.Path; got != want {
				t.Errorf("agent volume %s: got host path %q, want %q", vol, got, want)
			}
			for _, m := range container(t, spec, "agent").VolumeMounts {
				if m.Name == vol && m.MountPath != want {
					t.Errorf("agent volume %s: mounted at %q, want its host path %q", vol, m.MountPath, want)
				}
			}
		}
	}
	tests := []struct {
		name   string
		ns     string
		values string
		checks []check
	}{
		{
			name: "namespace", ns: "mesh-system",
			checks: []check{
				arg("Deployment", "istiod", "discovery", "ca-namespace", "mesh-system"),
				arg("Deployment", "istiod", "discovery", "node-agent", "mesh-system/ztunnel"),
				arg("Deployment", "istiod", "discovery", "dns-name", "istiod.mesh-system.svc"),
				arg("Deployment", "istiod", "discovery", "root-namespace", "mesh-system"),
				arg("DaemonSet", "ztunnel", "istio-proxy", "xds-address", "istiod.mesh-system.svc:15012"),
				arg("DaemonSet", "ztunnel", "istio-proxy", "ca-address", "istiod.mesh-system.svc:15012"),
			},
		},
		{
			name: "images", ns: namespace,
			values: "hub: registry.example/mesh\ntag: v2\nistiod: {image: other.example/istiod@sha256:0123}",
			checks: []check{
				image("Deployment", "istiod", "discovery", "other.example/istiod@sha256:0123"),
				image("DaemonSet", "ztunnel", "istio-proxy", "registry.example/mesh/ztunnel:v2"),
				image("DaemonSet", "ambit-cni-agent", "agent", "registry.example/mesh/ambit-cni:v2"),
			},
		},
		{
			name: "istiod", ns: namespace,
			values: "trustDomain: example.org\nclusterID: east\nnetwork: net1\nistiod: {certTTL: 2h, maxCertTTL: 12h, rootNamespace: policies, debug: true}",
			checks: []check{
				arg("Deployment", "istiod", "discovery", "trust-domain", "example.org"),
				arg("Deployment", "istiod", "discovery", "cluster-id", "east"),
				arg("Deployment", "istiod", "discovery", "network", "net1"),
				arg("Deployment", "istiod", "discovery", "cert-ttl", "2h"),
				arg("Deployment", "istiod", "discovery", "max-cert-ttl", "12h"),
				arg("Deployment", "istiod", "discovery", "root-namespace", "policies"),
				func(t *testing.T, r rendered) {
					args := container(t, get[*appsv1.Deployment](t, r, "istiod").Spec.Template.Spec, "discovery").Args
					if !slices.Contains(args, "--debug") {
						t.Errorf("istiod args %q: want --debug", args)
					}
					zenv := env(container(t, get[*appsv1.DaemonSet](t, r, "ztunnel").Spec.Template.Spec, "istio-proxy"))
					if zenv["CLUSTER_ID"] != "east" {
						t.Errorf("ztunnel CLUSTER_ID: got %q, want east, istiod's --cluster-id (istiod refuses callers of another cluster)", zenv["CLUSTER_ID"])
					}
				},
			},
		},
		{
			name: "istiod development endpoints", ns: namespace,
			values: "istiod: {plaintextXDS: true, debugEndpoints: true}",
			checks: []check{
				arg("Deployment", "istiod", "discovery", "xds-addr", ":15010"),
				func(t *testing.T, r rendered) {
					c := container(t, get[*appsv1.Deployment](t, r, "istiod").Spec.Template.Spec, "discovery")
					if !slices.Contains(c.Args, "--debug-endpoints") {
						t.Errorf("istiod args %q: want --debug-endpoints", c.Args)
					}
					if diff := gocmp.Diff([]int32{15010, 15012, 15014}, ports(c)); diff != "" {
						t.Errorf("ports (-want +got):\n%s", diff)
					}
					var sp []int32
					for _, p := range get[*corev1.Service](t, r, "istiod").Spec.Ports {
						sp = append(sp, p.Port)
					}
					if diff := gocmp.Diff([]int32{15010, 15012, 15014}, sp); diff != "" {
						t.Errorf("service ports (-want +got):\n%s", diff)
					}
				},
			},
		},
		{
			name: "cni dirs", ns: namespace,
			values: "cni: {confDir: /var/lib/cni/net.d, binDir: /home/kubernetes/bin, socketDir: /run/mesh, uplink: ens5}",
			checks: []check{
				arg("DaemonSet", "ambit-cni-agent", "agent", "cni-conf-dir", "/var/lib/cni/net.d"),
				arg("DaemonSet", "ambit-cni-agent", "agent", "cni-bin-dir", "/home/kubernetes/bin"),
				arg("DaemonSet", "ambit-cni-agent", "agent", "socket", "/run/mesh/cni.sock"),
				arg("DaemonSet", "ambit-cni-agent", "agent", "uplink", "ens5"),
				hostPath("cni-conf-dir", "/var/lib/cni/net.d"),
				hostPath("cni-bin-dir", "/home/kubernetes/bin"),
				hostPath("socket-dir", "/run/mesh"),
			},
		},
		{
			name: "ztunnel", ns: namespace,
			values: "ztunnel: {drainTimeoutSeconds: 10, logLevel: debug, capabilities: [NET_RAW]}",
			checks: []check{
				arg("DaemonSet", "ztunnel", "istio-proxy", "drain-timeout", "10s"),
				arg("DaemonSet", "ztunnel", "istio-proxy", "log-level", "debug"),
				func(t *testing.T, r rendered) {
					spec := get[*appsv1.DaemonSet](t, r, "ztunnel").Spec.Template.Spec
					if g := spec.TerminationGracePeriodSeconds; g == nil || *g != 15 {
						t.Errorf("terminationGracePeriodSeconds: got %v, want 15", g)
					}
					if got := container(t, spec, "istio-proxy").SecurityContext.Capabilities.Add; !slices.Equal(got, []corev1.Capability{"NET_RAW"}) {
						t.Errorf("capabilities: got %v, want [NET_RAW]", got)
					}
				},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			vals, err := chartutil.ReadValues([]byte(tc.values))
			if err != nil {
				t.Fatal(err)
			}
			r := render(t, tc.ns, vals)
			for _, c := range tc.checks {
				c(t, r)
			}
		})
	}
}

// TestNoStrayText guards the rendered YAML against template whitespace
// mistakes that the decoder tolerates: empty documents and trailing
// spaces.
func TestNoStrayText(t *testing.T) {
	r := render(t, namespace, nil)
	for i, line := range bytes.Split([]byte(r.text), []byte("\n")) {
		if len(bytes.TrimRight(line, " \t")) != len(line) {
			t.Errorf("rendered line %d %q: trailing whitespace", i+1, line)
		}
	}
}

// TestMeshConfig: the meshConfig values are rendered, as YAML, into the
// ConfigMap istio (key mesh) istiod watches; none renders "{}".
func TestMeshConfig(t *testing.T) {
	meshOf := func(r rendered) string {
		for _, o := range r.objs {
			if cm, ok := o.(*corev1.ConfigMap); ok && cm.Name == "istio" {
				return cm.Data["mesh"]
			}
		}
		t.Fatal("no ConfigMap istio")
		return ""
	}
	if got := meshOf(render(t, namespace, nil)); strings.TrimSpace(got) != "{}" {
		t.Errorf("default mesh: got %q, want {}", got)
	}
	got := meshOf(render(t, namespace, map[string]any{"meshConfig": map[string]any{
		"accessLogFile": "/dev/stdout",
		"extensionProviders": []any{map[string]any{"name": "zipkin",
			"zipkin": map[string]any{"service": "zipkin.istio-system.svc.cluster.local", "port": 9411}}},
	}}))
	var m map[string]any
	if err := yaml.Unmarshal([]byte(got), &m); err != nil {
		t.Fatalf("mesh %q: %v", got, err)
	}
	if m["accessLogFile"] != "/dev/stdout" || len(m["extensionProviders"].([]any)) != 1 {
		t.Errorf("mesh: got %v, want the values' meshConfig", m)
	}
}
