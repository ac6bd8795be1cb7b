package gateway

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambitmesh/ambit/internal/enrolment"
)

func waypointGateway(name string, listeners ...gatewayv1.Listener) *gatewayv1.Gateway {
	if len(listeners) == 0 {
		listeners = []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: ListenerProtocolHBONE}}
	}
	return &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, UID: "uid-1"},
		Spec:       gatewayv1.GatewaySpec{GatewayClassName: WaypointClass, Listeners: listeners},
	}
}

var testDeploy = DeployConfig{Image: "reg/ambit/waypoint:1", ImagePullPolicy: "IfNotPresent", IstiodAddress: "istiod.istio-system.svc:15012",
	TrustDomain: "cluster.local", ClusterID: "Kubernetes", DomainSuffix: "cluster.local"}

func decode[T any](t *testing.T, b []byte) *T {
	t.Helper()
	if b == nil {
		t.Fatalf("%T: not rendered", *new(T))
	}
	v := new(T)
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %T: %v", v, err)
	}
	return v
}

// checkMeta: every object is named as the Gateway, owned by it, and
// labelled as Istio labels a waypoint's objects.
func checkMeta(t *testing.T, kind string, m metav1.ObjectMeta) {
	t.Helper()
	if m.Name != "waypoint" || m.Namespace != "shop" {
		t.Errorf("%s: got %s/%s, want shop/waypoint", kind, m.Namespace, m.Name)
	}
	if len(m.OwnerReferences) != 1 || m.OwnerReferences[0].Kind != "Gateway" || m.OwnerReferences[0].UID != "uid-1" ||
		m.OwnerReferences[0].APIVersion != "gateway.networking.k8s.io/v1" {
		t.Errorf("%s: owner references %+v, want the Gateway", kind, m.OwnerReferences)
	}
	for k, want := range map[string]string{LabelManaged: ManagedMesh, LabelGatewayName: "waypoint", LabelIstioGatewayName: "waypoint",
		LabelGatewayClassName: WaypointClass, enrolment.LabelDataplaneMode: enrolment.ModeNone} {
		if got := m.Labels[k]; got != want {
			t.Errorf("%s: label %s = %q, want %q", kind, k, got, want)
		}
	}
}

// TestRender: a waypoint Gateway becomes its ServiceAccount, Service and
// Deployment, as Istio names and labels them, with no privilege.
func TestRender(t *testing.T) {
	gw := waypointGateway("waypoint")
	gw.Spec.Infrastructure = &gatewayv1.GatewayInfrastructure{
		Labels:      map[gatewayv1.LabelKey]gatewayv1.LabelValue{"team": "shop"},
		Annotations: map[gatewayv1.AnnotationKey]gatewayv1.AnnotationValue{"note": "hello"},
	}
	r, err := render(gw, testDeploy, customisation{})
	if err != nil {
		t.Fatal(err)
	}
	sa := decode[corev1.ServiceAccount](t, r.serviceAccount)
	svc := decode[corev1.Service](t, r.service)
	d := decode[appsv1.Deployment](t, r.deployment)
	if r.hpa != nil || r.pdb != nil {
		t.Errorf("got an autoscaler or a disruption budget, want none unless asked for")
	}
	for kind, m := range map[string]metav1.ObjectMeta{"serviceaccount": sa.ObjectMeta, "service": svc.ObjectMeta, "deployment": d.ObjectMeta} {
		checkMeta(t, kind, m)
		if m.Labels["team"] != "shop" || m.Annotations["note"] != "hello" {
			t.Errorf("%s: labels %v annotations %v, want the infrastructure's team=shop and note=hello", kind, m.Labels, m.Annotations)
		}
	}
	var ports []int32
	for _, p := range svc.Spec.Ports {
		ports = append(ports, p.Port)
	}
	if want := []int32{15021, 15020, 15008}; !slices.Equal(ports, want) {
		t.Errorf("service ports: got %v, want %v", ports, want)
	}
	if svc.Spec.Selector[LabelGatewayName] != "waypoint" {
		t.Errorf("service selector: got %v, want %s=waypoint", svc.Spec.Selector, LabelGatewayName)
	}
	pod := d.Spec.Template
	if pod.Labels[enrolment.LabelDataplaneMode] != enrolment.ModeNone || pod.Labels[LabelGatewayName] != "waypoint" {
		t.Errorf("pod labels %v: want %s=none and the gateway name", pod.Labels, enrolment.LabelDataplaneMode)
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 {
		t.Errorf("replicas: got %v, want 1", d.Spec.Replicas)
	}
	if pod.Spec.ServiceAccountName != "waypoint" {
		t.Errorf("service account: got %q, want waypoint", pod.Spec.ServiceAccountName)
	}
	c := pod.Spec.Containers[0]
	if c.Image != testDeploy.Image {
		t.Errorf("image: got %q, want %q", c.Image, testDeploy.Image)
	}
	if !slices.Contains(c.Args, "--xds-address=istiod.istio-system.svc:15012") || !slices.Contains(c.Args, "--ca-token=/var/run/secrets/tokens/istio-token") {
		t.Errorf("args %q: want istiod's address and the istio-ca token", c.Args)
	}
	if i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "GODEBUG" }); i < 0 || c.Env[i].Value != "http2xconnect=1" {
		t.Errorf("env %v: want GODEBUG=http2xconnect=1 (so the waypoint starts once, not twice)", c.Env)
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Port.IntVal != StatusPort {
		t.Errorf("readiness probe %+v: want HTTP on %d", p, StatusPort)
	}
	sc := c.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil ||
		!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
		t.Errorf("security context %+v: want non-root, read-only root, no capabilities, no escalation", sc)
	}
	var audience, labelsFile string
	for _, v := range pod.Spec.Volumes {
		if v.Projected != nil {
			audience = v.Projected.Sources[0].ServiceAccountToken.Audience
		}
		if v.DownwardAPI != nil && len(v.DownwardAPI.Items) > 0 && v.DownwardAPI.Items[0].FieldRef.FieldPath == "metadata.labels" {
			labelsFile = v.DownwardAPI.Items[0].Path
		}
	}
	if labelsFile != "labels" {
		t.Errorf("podinfo volume: labels file %q, want the pod's labels in labels (Istio's /etc/istio/pod/labels, sent as LABELS)", labelsFile)
	}
	if audience != "istio-ca" {
		t.Errorf("projected token audience: got %q, want istio-ca", audience)
	}
}

// TestRenderCustomisation: the class defaults, then the Gateway's
// parameters, are merged over the generated objects (strategic merge:
// containers by name); an autoscaler takes over the replica count; what
// names and owns the objects cannot be changed.
func TestRenderCustomisation(t *testing.T) {
	defaults := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "defaults"}, Data: map[string]string{
		KeyDeployment: "spec:\n  template:\n    spec:\n      containers:\n      - name: istio-proxy\n        resources:\n          requests:\n            cpu: 100m\n",
		KeyService:    "metadata:\n  annotations:\n    from: defaults\n",
	}}
	params := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "params"}, Data: map[string]string{
		KeyDeployment:              "metadata:\n  name: elsewhere\n  labels:\n    gateway.istio.io/managed: someone\nspec:\n  template:\n    spec:\n      containers:\n      - name: istio-proxy\n        resources:\n          requests:\n            cpu: 222m\n",
		KeyService:                 "metadata:\n  annotations:\n    from: params\n",
		KeyHorizontalPodAutoscaler: "spec:\n  minReplicas: 2\n  maxReplicas: 4\n",
		KeyPodDisruptionBudget:     "spec:\n  minAvailable: 1\n",
	}}
	cust := customisation{}
	for _, cm := range []*corev1.ConfigMap{defaults, params} {
		if err := cust.add(cm); err != nil {
			t.Fatal(err)
		}
	}
	r, err := render(waypointGateway("waypoint"), testDeploy, cust)
	if err != nil {
		t.Fatal(err)
	}
	d := decode[appsv1.Deployment](t, r.deployment)
	checkMeta(t, "deployment", d.ObjectMeta)
	c := d.Spec.Template.Spec.Containers
	if len(c) != 1 || c[0].Image != testDeploy.Image || c[0].Resources.Requests.Cpu().String() != "222m" {
		t.Errorf("containers %+v: want istio-proxy with its image and the parameters' cpu request 222m", c)
	}
	if d.Spec.Replicas != nil {
		t.Errorf("replicas: got %d, want none (the autoscaler's)", *d.Spec.Replicas)
	}
	svc := decode[corev1.Service](t, r.service)
	if svc.Annotations["from"] != "params" {
		t.Errorf("service annotation: got %q, want the parameters' (over the defaults')", svc.Annotations["from"])
	}
	hpa := decode[autoscalingv2.HorizontalPodAutoscaler](t, r.hpa)
	checkMeta(t, "hpa", hpa.ObjectMeta)
	if hpa.Spec.ScaleTargetRef.Name != "waypoint" || hpa.Spec.ScaleTargetRef.Kind != "Deployment" || hpa.Spec.MaxReplicas != 4 || *hpa.Spec.MinReplicas != 2 {
		t.Errorf("hpa spec %+v: want 2-4 replicas of deployment waypoint", hpa.Spec)
	}
	pdb := decode[policyv1.PodDisruptionBudget](t, r.pdb)
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntVal != 1 || pdb.Spec.Selector.MatchLabels[LabelGatewayName] != "waypoint" {
		t.Errorf("pdb spec %+v: want minAvailable 1 over the waypoint's pods", pdb.Spec)
	}
}

func TestRenderBadCustomisation(t *testing.T) {
	if err := (customisation{}).add(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Data: map[string]string{"deploymnet": "{}"}}); err == nil ||
		!strings.Contains(err.Error(), `unknown key "deploymnet"`) {
		t.Errorf("unknown key: got %v, want an error naming it", err)
	}
	_, err := render(waypointGateway("waypoint"), testDeploy, customisation{KeyDeployment: {"spec: [1, 2"}})
	if err == nil {
		t.Error("broken YAML: got no error, want one")
	}
	_, err = render(waypointGateway("waypoint"), testDeploy, customisation{KeyDeployment: {"spec:\n  replicas: many\n"}})
	if err == nil {
		t.Error("replicas: many: got no error, want one")
	}
}

// TestValidate: a waypoint needs an HBONE (or ALL) listener on 15008 and
// a known istio.io/waypoint-for; other listeners are refused alone.
func TestValidate(t *testing.T) {
	hbone := gatewayv1.Listener{Name: "mesh", Port: 15008, Protocol: ListenerProtocolHBONE}
	tests := []struct {
		name       string
		gw         *gatewayv1.Gateway
		wantReason string
		listeners  []bool
	}{
		{"hbone", waypointGateway("w"), "", []bool{true}},
		{"all", waypointGateway("w", gatewayv1.Listener{Name: "mesh", Port: 15008, Protocol: ListenerProtocolAll}), "", []bool{true}},
		{"extra http listener", waypointGateway("w", hbone, gatewayv1.Listener{Name: "web", Port: 80, Protocol: gatewayv1.HTTPProtocolType}), "", []bool{true, false}},
		{"wrong port", waypointGateway("w", gatewayv1.Listener{Name: "mesh", Port: 15009, Protocol: ListenerProtocolHBONE}), "ListenersNotValid", []bool{false}},
		{"no hbone", waypointGateway("w", gatewayv1.Listener{Name: "web", Port: 80, Protocol: gatewayv1.HTTPProtocolType}), "ListenersNotValid", []bool{false}},
		{"bad waypoint-for", func() *gatewayv1.Gateway {
			g := waypointGateway("w")
			g.Labels = map[string]string{LabelWaypointFor: "everything"}
			return g
		}(), "Invalid", []bool{true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := validate(tc.gw)
			if v.reason != tc.wantReason || (v.reason == "") != (v.invalid == "") {
				t.Errorf("got reason %q (%q), want %q", v.reason, v.invalid, tc.wantReason)
			}
			var got []bool
			for _, l := range v.listeners {
				got = append(got, l.ok)
			}
			if !slices.Equal(got, tc.listeners) {
				t.Errorf("listeners ok: got %v, want %v", got, tc.listeners)
			}
		})
	}
}

// TestKeepCustomisations: the ConfigMap cache keeps the data only of
// ConfigMaps that hold a customisation.
func TestKeepCustomisations(t *testing.T) {
	other := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "big", ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "x"}}},
		Data: map[string]string{"blob": "..."}, BinaryData: map[string][]byte{"b": {1}}}
	cust := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "params"}, Data: map[string]string{KeyService: "{}", "note": "kept"}}
	for _, cm := range []*corev1.ConfigMap{other, cust} {
		if _, err := keepCustomisations(cm); err != nil {
			t.Fatal(err)
		}
	}
	if other.Data != nil || other.BinaryData != nil || other.ManagedFields != nil {
		t.Errorf("other configmap: got data %v, binary %v, managed fields %v; want none", other.Data, other.BinaryData, other.ManagedFields)
	}
	if len(cust.Data) != 2 {
		t.Errorf("customisation: got data %v, want all of it (an unknown key is reported, not dropped)", cust.Data)
	}
}
