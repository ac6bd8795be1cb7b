package ambient

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/ambitmesh/ambit/api/workload"
)

func ns(name string, lbls map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}
}

func pod(namespace, name, ip, node string, lbls map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: lbls},
		Spec: corev1.PodSpec{
			NodeName:           node,
			ServiceAccountName: "sa-" + name,
			Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: 8080}, {Name: "tcp", ContainerPort: 9000},
			}}},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
}

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func TestCaptured(t *testing.T) {
	amb := map[string]string{DataplaneModeLabel: DataplaneModeAmbient}
	none := map[string]string{DataplaneModeLabel: DataplaneModeNone}
	tests := []struct {
		name    string
		ns, pod map[string]string
		hostNet bool
		want    bool
	}{
		{"nothing", nil, nil, false, false},
		{"namespace", amb, nil, false, true},
		{"pod", nil, amb, false, true},
		{"pod opts out", amb, none, false, false},
		{"host network", amb, nil, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := pod("a", "p", "10.244.1.2", "n1", tc.pod)
			p.Spec.HostNetwork = tc.hostNet
			if got := Captured(ns("a", tc.ns), p); got != tc.want {
				t.Errorf("Captured: got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestBuild(t *testing.T) {
	cfg := Config{ClusterID: "c1"}
	web := pod("shop", "web-7d9f-abc", "10.244.1.5", "node1", map[string]string{"app": "web", "version": "v2", "pod-template-hash": "7d9f"})
	web.OwnerReferences = []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "web-7d9f", Controller: ptr.To(true)}}
	web.Annotations = map[string]string{"ambient.istio.io/redirection": "enabled"}
	optOut := pod("shop", "legacy", "10.244.2.9", "node2", map[string]string{"app": "web", DataplaneModeLabel: DataplaneModeNone})
	optOut.Spec.ServiceAccountName = ""
	pending := pod("shop", "pending", "", "node2", nil)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector:   map[string]string{"app": "web"},
			ClusterIP:  "10.96.0.20",
			ClusterIPs: []string{"10.96.0.20"},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
				{Name: "tcp", Port: 9000, TargetPort: intstr.FromInt32(9000)},
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
			},
		},
	}
	headless := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db"},
		Spec:       corev1.ServiceSpec{ClusterIP: "None", ClusterIPs: []string{"None"}, Ports: []corev1.ServicePort{{Name: "pg", Port: 5432}}},
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: "db-x", Labels: map[string]string{discoveryv1.LabelServiceName: "db"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("pg"), Port: ptr.To[int32](15432)}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"192.168.7.7"}, NodeName: ptr.To("node2")},
			{Addresses: []string{"10.244.1.5"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "web-7d9f-abc"}},
		},
	}
	st := State{
		Namespaces:     []*corev1.Namespace{ns("shop", map[string]string{DataplaneModeLabel: DataplaneModeAmbient})},
		Pods:           []*corev1.Pod{web, optOut, pending},
		Services:       []*corev1.Service{svc, headless},
		EndpointSlices: []*discoveryv1.EndpointSlice{slice},
		Nodes:          []*corev1.Node{{ObjectMeta: metav1.ObjectMeta{Name: "node1", Labels: map[string]string{"topology.kubernetes.io/zone": "z1"}}}},
	}
	got := Build(st, cfg)

	webHost := "shop/web.shop.svc.cluster.local"
	dbHost := "shop/db.shop.svc.cluster.local"
	want := map[string]*workload.Address{
		webHost: {Type: &workload.Address_Service{Service: &workload.Service{
			Name: "web", Namespace: "shop", Hostname: "web.shop.svc.cluster.local",
			Addresses: []*workload.NetworkAddress{{Address: ip("10.96.0.20")}},
			Ports:     []*workload.Port{{ServicePort: 80}, {ServicePort: 9000, TargetPort: 9000}},
		}}},
		dbHost: {Type: &workload.Address_Service{Service: &workload.Service{
			Name: "db", Namespace: "shop", Hostname: "db.shop.svc.cluster.local",
			Ports: []*workload.Port{{ServicePort: 5432}},
		}}},
		"c1//Pod/shop/web-7d9f-abc": {Type: &workload.Address_Workload{Workload: &workload.Workload{
			Uid: "c1//Pod/shop/web-7d9f-abc", Name: "web-7d9f-abc", Namespace: "shop",
			Addresses: [][]byte{ip("10.244.1.5")}, TunnelProtocol: workload.TunnelProtocol_HBONE,
			TrustDomain: "cluster.local", ServiceAccount: "sa-web-7d9f-abc", Node: "node1", ClusterId: "c1",
			CanonicalName: "web", CanonicalRevision: "v2",
			WorkloadType: workload.WorkloadType_DEPLOYMENT, WorkloadName: "web",
			Locality: &workload.Locality{Zone: "z1"},
			Services: map[string]*workload.PortList{
				webHost: {Ports: []*workload.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 9000, TargetPort: 9000}}},
				dbHost:  {Ports: []*workload.Port{{ServicePort: 5432, TargetPort: 15432}}},
			},
		}}},
		"c1//Pod/shop/legacy": {Type: &workload.Address_Workload{Workload: &workload.Workload{
			Uid: "c1//Pod/shop/legacy", Name: "legacy", Namespace: "shop",
			Addresses: [][]byte{ip("10.244.2.9")}, TunnelProtocol: workload.TunnelProtocol_NONE,
			TrustDomain: "cluster.local", ServiceAccount: "default", Node: "node2", ClusterId: "c1",
			CanonicalName: "web", CanonicalRevision: "latest",
			WorkloadType: workload.WorkloadType_POD, WorkloadName: "legacy",
			Services: map[string]*workload.PortList{
				webHost: {Ports: []*workload.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 9000, TargetPort: 9000}}},
			},
		}}},
		"c1/discovery.k8s.io/EndpointSlice/shop/db-x/192.168.7.7": {Type: &workload.Address_Workload{Workload: &workload.Workload{
			Uid: "c1/discovery.k8s.io/EndpointSlice/shop/db-x/192.168.7.7", Name: "db-x", Namespace: "shop",
			Addresses: [][]byte{ip("192.168.7.7")}, TrustDomain: "cluster.local", ServiceAccount: "default",
			Node: "node2", ClusterId: "c1", CanonicalName: "db", WorkloadName: "db",
			Services: map[string]*workload.PortList{dbHost: {Ports: []*workload.Port{{ServicePort: 5432, TargetPort: 15432}}}},
		}}},
	}
	if diff := cmp.Diff(want, got.Addresses, protocmp.Transform()); diff != "" {
		t.Errorf("Build addresses (-want +got):\n%s", diff)
	}
}

// TestHBONEOnlyOnceRedirected: a pod of an ambient namespace is advertised
// as HBONE only once the node agent has annotated it as redirected.
func TestHBONEOnlyOnceRedirected(t *testing.T) {
	amb := ns("shop", map[string]string{DataplaneModeLabel: DataplaneModeAmbient})
	p := pod("shop", "web", "10.244.1.5", "node1", nil)
	tunnel := func() workload.TunnelProtocol {
		m := Build(State{Namespaces: []*corev1.Namespace{amb}, Pods: []*corev1.Pod{p}}, Config{ClusterID: "c1"})
		return m.Addresses["c1//Pod/shop/web"].GetWorkload().GetTunnelProtocol()
	}
	if got := tunnel(); got != workload.TunnelProtocol_NONE {
		t.Errorf("captured, not yet redirected: got %s, want NONE", got)
	}
	p.Annotations = map[string]string{"ambient.istio.io/redirection": "enabled"}
	if got := tunnel(); got != workload.TunnelProtocol_HBONE {
		t.Errorf("captured and redirected: got %s, want HBONE", got)
	}
	p.Labels = map[string]string{DataplaneModeLabel: DataplaneModeNone}
	if got := tunnel(); got != workload.TunnelProtocol_NONE {
		t.Errorf("opted out, annotation not yet removed: got %s, want NONE", got)
	}
}
