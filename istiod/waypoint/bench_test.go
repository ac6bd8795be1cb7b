package waypoint

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewaylisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"

	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/xds"
)

func indexer() cache.Indexer {
	return cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
}

// benchRoute is the HTTPRoute of service i, splitting between itself
// and the next service of its waypoint by weight w.
func benchRoute(ns string, i, w int, rv string) *gatewayv1.HTTPRoute {
	port := gatewayv1.PortNumber(80)
	kind := gatewayv1.Kind("Service")
	other := i + 1
	if other%10 == 0 {
		other -= 10
	}
	return &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("svc%d", i), ResourceVersion: rv},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{Kind: &kind, Name: gatewayv1.ObjectName(fmt.Sprintf("svc%d", i))}}},
			Rules: []gatewayv1.HTTPRouteRule{{BackendRefs: []gatewayv1.HTTPBackendRef{
				{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(fmt.Sprintf("svc%d", i)), Port: &port}, Weight: ptrTo(int32(100 - w))}},
				{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(fmt.Sprintf("svc%d", other)), Port: &port}, Weight: ptrTo(int32(w))}},
			}}},
		},
	}
}

// BenchmarkRouteChange measures how long an HTTPRoute change takes to
// reach its waypoint's xDS client: the controller's flush (what every
// waypoint serves, the changed waypoint rebuilt, the difference
// published) and the delta push over gRPC on loopback, with 1,000
// Services (3 pods each, one HTTPRoute each) in 20 namespaces, bound to
// 100 service waypoints (10 Services each), each with its client
// connected. istiod's debounce (ambient.DefaultQuiet, 10 ms of quiet
// after the last event) comes on top. Run it with -benchtime 300x.
func BenchmarkRouteChange(b *testing.B) {
	const services, waypoints, podsPer = 1000, 100, 3
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	var st ambient.State
	svcIdx, gwIdx, routeIdx := indexer(), indexer(), indexer()
	nsOf := func(i int) string { return fmt.Sprintf("ns%d", i/50) }
	for n := range services / 50 {
		st.Namespaces = append(st.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ns%d", n),
			Labels: map[string]string{ambient.DataplaneModeLabel: ambient.DataplaneModeAmbient}}})
	}
	for w := range waypoints {
		ns := nsOf(w * 10)
		name := fmt.Sprintf("wp%d", w)
		gw := &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint", Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}}}
		st.Gateways = append(st.Gateways, gw)
		if err := gwIdx.Add(gw); err != nil {
			b.Fatal(err)
		}
		ip := fmt.Sprintf("10.97.%d.%d", w/250, w%250+1)
		st.Services = append(st.Services, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			Labels: map[string]string{ambient.LabelGatewayManaged: ambient.GatewayManagedMesh}},
			Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip}, Ports: []corev1.ServicePort{{Name: "mesh", Port: 15008}}}})
	}
	for i := range services {
		ns, name := nsOf(i), fmt.Sprintf("svc%d", i)
		ip := fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			Labels: map[string]string{ambient.LabelUseWaypoint: fmt.Sprintf("wp%d", i/10)}},
			Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip}, Selector: map[string]string{"app": name},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
		st.Services = append(st.Services, svc)
		if err := svcIdx.Add(svc); err != nil {
			b.Fatal(err)
		}
		if err := routeIdx.Add(benchRoute(ns, i, 0, "1")); err != nil {
			b.Fatal(err)
		}
		for p := range podsPer {
			podIP := fmt.Sprintf("10.%d.%d.%d", 100+i/250, i%250, p+1)
			st.Pods = append(st.Pods, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("%s-%d", name, p), Labels: map[string]string{"app": name}},
				Spec:       corev1.PodSpec{NodeName: "node1"},
				Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: podIP, PodIPs: []corev1.PodIP{{IP: podIP}},
					Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
			})
		}
	}
	model := ambient.Build(st, ambient.Config{})

	c := NewController(ControllerOptions{})
	c.services = corelisters.NewServiceLister(svcIdx)
	c.gateways = gatewaylisters.NewGatewayLister(gwIdx)
	c.httpRoutes = gatewaylisters.NewHTTPRouteLister(routeIdx)
	c.grpcRoutes = gatewaylisters.NewGRPCRouteLister(indexer())
	c.grants = gatewaylisters.NewReferenceGrantLister(indexer())
	c.addrs, c.haveModel = model.Addresses, true
	srv := xds.New(xds.Options{Types: c.XDSTypes()})
	c.pub = srv
	c.flush(ctx)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	go g.Serve(lis)
	defer g.Stop()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	types := []string{ClusterType, EndpointType, ListenerType}
	// listenerPushes[w] gets a value for each Listener response waypoint
	// w's client receives.
	listenerPushes := make([]chan struct{}, waypoints)
	for w := range waypoints {
		listenerPushes[w] = make(chan struct{}, 64)
		st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
		if err != nil {
			b.Fatal(err)
		}
		node := &core.Node{Id: fmt.Sprintf("waypoint~10.98.0.%d~wp%d-0.%s~%s.svc.cluster.local", w, w, nsOf(w*10), nsOf(w*10)),
			Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{"LABELS": structpb.NewStructValue(&structpb.Struct{
				Fields: map[string]*structpb.Value{ambient.LabelGatewayName: structpb.NewStringValue(fmt.Sprintf("wp%d", w))}})}}}
		for i, typ := range types {
			req := &discovery.DeltaDiscoveryRequest{TypeUrl: typ}
			if i == 0 {
				req.Node = node
			}
			if err := st.Send(req); err != nil {
				b.Fatal(err)
			}
		}
		go func() {
			for {
				resp, err := st.Recv()
				if err != nil {
					return
				}
				if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
					return
				}
				if resp.GetTypeUrl() == ListenerType {
					listenerPushes[w] <- struct{}{}
				}
			}
		}()
	}
	for w := range waypoints {
		select {
		case <-listenerPushes[w]: // the initial listeners
		case <-time.After(time.Minute):
			b.Fatalf("waypoint %d: no initial listeners", w)
		}
	}

	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for n := range b.N {
		i := (n * 37) % services // spread over waypoints
		w := i / 10
		if err := routeIdx.Update(benchRoute(nsOf(i), i, 1+n%99, strconv.Itoa(n+2))); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		c.flush(ctx)
		select {
		case <-listenerPushes[w]:
		case <-time.After(time.Minute):
			b.Fatalf("change %d: waypoint %d got no listener push", n, w)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
	b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
}
