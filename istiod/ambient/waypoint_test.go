package ambient

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambitmesh/ambit/api/workload"
)

// waypointGateway is a valid waypoint Gateway.
func waypointGateway(namespace, name string, lbls map[string]string) *gatewayv1.Gateway {
	return &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: lbls},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: "istio-waypoint",
			Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: WaypointListenerProtocol}},
		},
	}
}

func vipService(namespace, name, vip string, lbls map[string]string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: lbls},
		Spec: corev1.ServiceSpec{ClusterIP: vip, ClusterIPs: []string{vip}, Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: "http", Port: 9080}}},
	}
}

func use(name string) map[string]string { return map[string]string{LabelUseWaypoint: name} }

func forLabel(v string) map[string]string { return map[string]string{LabelWaypointFor: v} }

// waypointState is a namespace "app" with a pod "reviews-1" (service
// account "reviews") behind Service "reviews", and waypoints in "app"
// (ns-wp for all, svc-wp for service, pod-wp for workload, sa-wp with no
// label) and in "infra" (shared, for all, its listener as given).
func waypointState() *State {
	p := pod("app", "reviews-1", "10.244.0.5", "n1", map[string]string{"app": "reviews"})
	p.Spec.ServiceAccountName = "reviews"
	return &State{
		Namespaces: []*corev1.Namespace{ns("app", map[string]string{DataplaneModeLabel: DataplaneModeAmbient, "team": "a"}), ns("infra", nil)},
		Pods:       []*corev1.Pod{p},
		ServiceAccounts: []*corev1.ServiceAccount{
			{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "reviews"}},
		},
		Services: []*corev1.Service{
			vipService("app", "reviews", "10.96.0.10", nil),
			vipService("app", "ns-wp", "10.96.1.1", nil), vipService("app", "svc-wp", "10.96.1.2", nil),
			vipService("app", "pod-wp", "10.96.1.3", nil), vipService("app", "sa-wp", "10.96.1.4", nil),
			vipService("infra", "shared", "10.96.2.1", nil),
		},
		Gateways: []*gatewayv1.Gateway{
			waypointGateway("app", "ns-wp", forLabel(WaypointForAll)), waypointGateway("app", "svc-wp", forLabel(WaypointForService)),
			waypointGateway("app", "pod-wp", forLabel(WaypointForWorkload)), waypointGateway("app", "sa-wp", nil),
			waypointGateway("infra", "shared", forLabel(WaypointForAll)),
		},
	}
}

// waypointOf describes a GatewayAddress: its VIP, "host:<hostname>", or
// "" for none.
func waypointOf(ga *workload.GatewayAddress) string {
	switch {
	case ga == nil:
		return ""
	case ga.GetHostname() != nil:
		return "host:" + ga.GetHostname().Hostname
	}
	a, _ := netip.AddrFromSlice(ga.GetAddress().GetAddress())
	if ga.HboneMtlsPort != 15008 {
		return a.String() + " (wrong port)"
	}
	return a.String()
}

func TestWaypointBindings(t *testing.T) {
	appNS := func(s *State) *corev1.Namespace { return s.Namespaces[0] }
	reviewsPod := func(s *State) *corev1.Pod { return s.Pods[0] }
	reviewsSA := func(s *State) *corev1.ServiceAccount { return s.ServiceAccounts[0] }
	reviewsSvc := func(s *State) *corev1.Service { return s.Services[0] }
	gw := func(s *State, name string) *gatewayv1.Gateway {
		for _, g := range s.Gateways {
			if g.Name == name {
				return g
			}
		}
		t.Fatalf("no gateway %s", name)
		return nil
	}
	setLabels := func(m *metav1.ObjectMeta, l map[string]string) {
		if m.Labels == nil {
			m.Labels = map[string]string{}
		}
		for k, v := range l {
			m.Labels[k] = v
		}
	}
	fromAll := gatewayv1.NamespacesFromAll
	fromSel := gatewayv1.NamespacesFromSelector
	tests := []struct {
		name                  string
		edit                  func(s *State)
		wantWorkload, wantSvc string
		// wantStatus: StatusKey -> reason; "-" means no status.
		wantStatus map[string]string
	}{
		{name: "nothing bound", edit: func(*State) {}},
		{name: "namespace, waypoint for all", edit: func(s *State) { setLabels(&appNS(s).ObjectMeta, use("ns-wp")) },
			wantWorkload: "10.96.1.1", wantSvc: "10.96.1.1", wantStatus: map[string]string{"Namespace/app": ReasonWaypointAccepted}},
		{name: "namespace, waypoint for service only", edit: func(s *State) { setLabels(&appNS(s).ObjectMeta, use("svc-wp")) },
			wantSvc: "10.96.1.2", wantStatus: map[string]string{"Namespace/app": ReasonWaypointAccepted}},
		{name: "namespace, waypoint for workload only", edit: func(s *State) { setLabels(&appNS(s).ObjectMeta, use("pod-wp")) },
			wantWorkload: "10.96.1.3", wantStatus: map[string]string{"Namespace/app": ReasonWaypointAccepted}},
		{name: "service account beats namespace, defaults to all", edit: func(s *State) {
			setLabels(&appNS(s).ObjectMeta, use("ns-wp"))
			setLabels(&reviewsSA(s).ObjectMeta, use("sa-wp"))
		}, wantWorkload: "10.96.1.4", wantSvc: "", // the endpoint's binding beats the namespace's
			wantStatus: map[string]string{"ServiceAccount/app/reviews": ReasonWaypointAccepted}},
		{name: "pod beats service account", edit: func(s *State) {
			setLabels(&appNS(s).ObjectMeta, use("ns-wp"))
			setLabels(&reviewsSA(s).ObjectMeta, use("sa-wp"))
			setLabels(&reviewsPod(s).ObjectMeta, use("pod-wp"))
		}, wantWorkload: "10.96.1.3", wantSvc: ""}, // the endpoint's binding beats the namespace's
		{name: "service beats everything for service traffic", edit: func(s *State) {
			setLabels(&appNS(s).ObjectMeta, use("ns-wp"))
			setLabels(&reviewsSA(s).ObjectMeta, use("sa-wp"))
			setLabels(&reviewsSvc(s).ObjectMeta, use("svc-wp"))
		}, wantWorkload: "10.96.1.4", wantSvc: "10.96.1.2", wantStatus: map[string]string{"Service/app/reviews": ReasonWaypointAccepted}},
		{name: "pod none opts out of the namespace", edit: func(s *State) {
			setLabels(&appNS(s).ObjectMeta, use("ns-wp"))
			setLabels(&reviewsPod(s).ObjectMeta, use(UseWaypointNone))
		}, wantSvc: "10.96.1.1"},
		{name: "service account none opts out of the namespace", edit: func(s *State) {
			setLabels(&appNS(s).ObjectMeta, use("ns-wp"))
			setLabels(&reviewsSA(s).ObjectMeta, use(UseWaypointNone))
		}, wantSvc: "10.96.1.1"},
		{name: "service none opts out of the namespace", edit: func(s *State) {
			setLabels(&appNS(s).ObjectMeta, use("ns-wp"))
			setLabels(&reviewsSvc(s).ObjectMeta, use(UseWaypointNone))
		}, wantWorkload: "10.96.1.1"},
		{name: "gateway annotated for the service account (Istio 1.18-1.21)", edit: func(s *State) {
			setLabels(&appNS(s).ObjectMeta, use("ns-wp"))
			g := gw(s, "sa-wp")
			g.Annotations = map[string]string{AnnotationForServiceAccount: "reviews"}
			g.Spec.Listeners[0].Protocol = WaypointListenerProtocolAll
		}, wantWorkload: "10.96.1.4"},
		{name: "two gateways claim one service account: neither", edit: func(s *State) {
			setLabels(&appNS(s).ObjectMeta, use("ns-wp"))
			gw(s, "sa-wp").Annotations = map[string]string{AnnotationForServiceAccount: "reviews"}
			gw(s, "svc-wp").Annotations = map[string]string{AnnotationForServiceAccount: "reviews"}
		}, wantWorkload: "10.96.1.1", wantSvc: "10.96.1.1",
			wantStatus: map[string]string{"Gateway/app/sa-wp": ReasonWaypointConflict, "Gateway/app/svc-wp": ReasonWaypointConflict}},
		{name: "missing waypoint fails closed: hostname that resolves to nothing", edit: func(s *State) {
			setLabels(&reviewsSvc(s).ObjectMeta, use("gone"))
			setLabels(&reviewsPod(s).ObjectMeta, use("gone"))
		}, wantWorkload: "host:gone.app.svc.cluster.local", wantSvc: "host:gone.app.svc.cluster.local",
			wantStatus: map[string]string{"Service/app/reviews": ReasonWaypointNotFound}},
		{name: "waypoint without its Service yet: hostname", edit: func(s *State) {
			s.Services = s.Services[:1]
			setLabels(&appNS(s).ObjectMeta, use("ns-wp"))
		}, wantWorkload: "host:ns-wp.app.svc.cluster.local", wantSvc: "host:ns-wp.app.svc.cluster.local"},
		{name: "wrong class: fails closed", edit: func(s *State) {
			gw(s, "svc-wp").Spec.GatewayClassName = "istio"
			setLabels(&reviewsSvc(s).ObjectMeta, use("svc-wp"))
		}, wantSvc: "host:svc-wp.app.waypoint.invalid", wantStatus: map[string]string{"Service/app/reviews": ReasonWaypointInvalid, "Gateway/app/svc-wp": "-"}},
		{name: "wrong port: fails closed", edit: func(s *State) {
			gw(s, "svc-wp").Spec.Listeners[0].Port = 15009
			setLabels(&reviewsSvc(s).ObjectMeta, use("svc-wp"))
		}, wantSvc: "host:svc-wp.app.waypoint.invalid", wantStatus: map[string]string{"Service/app/reviews": ReasonWaypointInvalid, "Gateway/app/svc-wp": ReasonWaypointInvalid}},
		{name: "wrong protocol: fails closed", edit: func(s *State) {
			gw(s, "svc-wp").Spec.Listeners[0].Protocol = gatewayv1.HTTPProtocolType
			setLabels(&reviewsSvc(s).ObjectMeta, use("svc-wp"))
		}, wantSvc: "host:svc-wp.app.waypoint.invalid", wantStatus: map[string]string{"Service/app/reviews": ReasonWaypointInvalid, "Gateway/app/svc-wp": ReasonWaypointInvalid}},
		{name: "wrong traffic type: a workload waypoint for a service", edit: func(s *State) {
			setLabels(&reviewsSvc(s).ObjectMeta, use("pod-wp"))
		}, wantStatus: map[string]string{"Service/app/reviews": ReasonWaypointTraffic}},
		{name: "other namespace refused by allowedRoutes (Same): fails closed", edit: func(s *State) {
			setLabels(&reviewsSvc(s).ObjectMeta, map[string]string{LabelUseWaypoint: "shared", LabelUseWaypointNamespace: "infra"})
		}, wantSvc: "host:shared.infra.waypoint.invalid", wantStatus: map[string]string{"Service/app/reviews": ReasonWaypointNotAllowed}},
		{name: "other namespace allowed (All)", edit: func(s *State) {
			gw(s, "shared").Spec.Listeners[0].AllowedRoutes = &gatewayv1.AllowedRoutes{Namespaces: &gatewayv1.RouteNamespaces{From: &fromAll}}
			setLabels(&appNS(s).ObjectMeta, map[string]string{LabelUseWaypoint: "shared", LabelUseWaypointNamespace: "infra"})
		}, wantWorkload: "10.96.2.1", wantSvc: "10.96.2.1", wantStatus: map[string]string{"Namespace/app": ReasonWaypointAccepted}},
		{name: "other namespace allowed by selector", edit: func(s *State) {
			gw(s, "shared").Spec.Listeners[0].AllowedRoutes = &gatewayv1.AllowedRoutes{Namespaces: &gatewayv1.RouteNamespaces{From: &fromSel,
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}}}
			setLabels(&reviewsSA(s).ObjectMeta, map[string]string{LabelUseWaypoint: "shared", LabelUseWaypointNamespace: "infra"})
		}, wantWorkload: "10.96.2.1"},
		{name: "other namespace refused by selector: fails closed", edit: func(s *State) {
			gw(s, "shared").Spec.Listeners[0].AllowedRoutes = &gatewayv1.AllowedRoutes{Namespaces: &gatewayv1.RouteNamespaces{From: &fromSel,
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "b"}}}}
			setLabels(&reviewsSA(s).ObjectMeta, map[string]string{LabelUseWaypoint: "shared", LabelUseWaypointNamespace: "infra"})
		}, wantWorkload: "host:shared.infra.waypoint.invalid", wantStatus: map[string]string{"ServiceAccount/app/reviews": ReasonWaypointNotAllowed}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := waypointState()
			tc.edit(s)
			m := Build(*s, Config{})
			w := m.Addresses[PodUID("Kubernetes", "app", "reviews-1")].GetWorkload()
			if w == nil {
				t.Fatal("no workload for reviews-1")
			}
			if got := waypointOf(w.Waypoint); got != tc.wantWorkload {
				t.Errorf("Workload.waypoint: got %q, want %q", got, tc.wantWorkload)
			}
			svc := m.Addresses[ServiceName("app", "reviews.app.svc.cluster.local")].GetService()
			if got := waypointOf(svc.GetWaypoint()); got != tc.wantSvc {
				t.Errorf("Service.waypoint: got %q, want %q", got, tc.wantSvc)
			}
			for k, want := range tc.wantStatus {
				st, ok := m.WaypointStatus[k]
				switch {
				case want == "-" && ok:
					t.Errorf("status %s: got %+v, want none", k, st)
				case want != "-" && st.Reason != want:
					t.Errorf("status %s: got %+v, want reason %s", k, st, want)
				case want != "-" && st.Bound != (want == ReasonWaypointAccepted):
					t.Errorf("status %s: got bound %v with reason %s", k, st.Bound, st.Reason)
				case want != "-" && st.Message == "":
					t.Errorf("status %s: no message", k)
				}
			}
			// A waypoint's own Service never goes through a waypoint.
			if wp := m.Addresses[ServiceName("app", "ns-wp.app.svc.cluster.local")].GetService().GetWaypoint(); wp != nil {
				t.Errorf("waypoint ns-wp's own Service has waypoint %v", wp)
			}
		})
	}
}

// TestWaypointOwnPods: a waypoint's pods speak HBONE themselves though
// they are not captured, and never go through a waypoint.
func TestWaypointOwnPods(t *testing.T) {
	s := waypointState()
	s.Namespaces[0].Labels[LabelUseWaypoint] = "ns-wp"
	wp := pod("app", "ns-wp-7c9", "10.244.0.9", "n1", map[string]string{LabelGatewayName: "ns-wp", DataplaneModeLabel: DataplaneModeNone})
	s.Pods = append(s.Pods, wp)
	m := Build(*s, Config{})
	w := m.Addresses[PodUID("Kubernetes", "app", "ns-wp-7c9")].GetWorkload()
	if w.GetTunnelProtocol() != workload.TunnelProtocol_HBONE || !w.GetNativeTunnel() {
		t.Errorf("waypoint pod tunnel: got %v (native %t), want HBONE, native (no ztunnel serves it)", w.GetTunnelProtocol(), w.GetNativeTunnel())
	}
	if w.GetWaypoint() != nil {
		t.Errorf("waypoint pod has waypoint %v, want none", w.GetWaypoint())
	}
}

// TestBuilderWaypointEvents: the Builder follows each kind of event that
// moves a binding, as Build does.
func TestBuilderWaypointEvents(t *testing.T) {
	s := waypointState()
	s.Namespaces[0].Labels[LabelUseWaypoint] = "ns-wp"
	b := NewBuilder(Config{})
	for _, n := range s.Namespaces {
		b.SetNamespace(n)
	}
	for _, x := range s.Services {
		b.SetService(x)
	}
	for _, x := range s.Pods {
		b.SetPod(x)
	}
	for _, x := range s.ServiceAccounts {
		b.SetServiceAccount(x)
	}
	for _, x := range s.Gateways {
		b.SetGateway(x)
	}
	// A selector-less Service whose EndpointSlice names the pod later.
	legacy := vipService("app", "legacy", "10.96.0.11", nil)
	legacy.Spec.Selector = nil
	s.Services = append(s.Services, legacy)
	b.SetService(legacy)
	check := func(what string) {
		t.Helper()
		b.Flush()
		want := Build(*s, Config{})
		got := b.Model()
		for _, k := range []string{PodUID("Kubernetes", "app", "reviews-1"), ServiceName("app", "reviews.app.svc.cluster.local"),
			ServiceName("app", "legacy.app.svc.cluster.local")} {
			if g, w := waypointOf(addrWaypoint(got.Addresses[k])), waypointOf(addrWaypoint(want.Addresses[k])); g != w {
				t.Errorf("%s: %s waypoint: got %q, want %q (Build)", what, k, g, w)
			}
		}
	}
	check("start")
	sa := s.ServiceAccounts[0].DeepCopy()
	sa.Labels = use("sa-wp")
	s.ServiceAccounts[0] = sa
	b.SetServiceAccount(sa)
	check("service account labelled")
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "legacy-1", Labels: map[string]string{discoveryv1.LabelServiceName: "legacy"}},
		Endpoints:  []discoveryv1.Endpoint{{Addresses: []string{"10.244.0.5"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "reviews-1"}}},
	}
	s.EndpointSlices = append(s.EndpointSlices, es)
	b.SetEndpointSlice(es)
	check("slice names the bound pod")
	gw := s.Gateways[3].DeepCopy() // sa-wp
	gw.Spec.Listeners[0].Port = 1
	s.Gateways[3] = gw
	b.SetGateway(gw)
	check("service account's waypoint broken")
	p := s.Pods[0].DeepCopy()
	p.Labels[LabelUseWaypoint] = "pod-wp"
	s.Pods[0] = p
	b.SetPod(p)
	check("pod labelled")
	b.DeleteServiceAccount("app", "reviews")
	s.ServiceAccounts = nil
	check("service account deleted")
	b.DeleteEndpointSlice("app", "legacy-1")
	s.EndpointSlices = nil
	check("slice deleted")
}

func addrWaypoint(a *workload.Address) *workload.GatewayAddress {
	if w := a.GetWorkload(); w != nil {
		return w.GetWaypoint()
	}
	return a.GetService().GetWaypoint()
}
