package waypoint

import (
	"errors"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/ambitmesh/ambit/istiod/ambient"
)

// An invalid typed config deep inside a resource fails validation; PGV's
// own Validate would not look inside the Any.
func TestValidateInsideAny(t *testing.T) {
	bad := &listener.Listener{
		Name:    "l",
		Address: socketAddress("0.0.0.0", 1),
		FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{{
			Name: filterTCPProxy,
			// stat_prefix is required.
			ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(&tcp.TcpProxy{ClusterSpecifier: &tcp.TcpProxy_Cluster{Cluster: "c"}})},
		}}}},
	}
	if err := bad.Validate(); err != nil {
		t.Fatalf("Listener.Validate: got %v, want nil (it does not open the Any)", err)
	}
	err := (&Resources{Listeners: []*listener.Listener{bad}}).Validate()
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "StatPrefix") {
		t.Fatalf("Resources.Validate: got %v, want ErrInvalid naming StatPrefix", err)
	}
}

// A waypoint that serves nothing (or does not exist) still gets a valid
// config whose main_internal matches no chain.
func TestBuildNothingServed(t *testing.T) {
	res, err := Build(&Input{Addresses: ambient.Build(ambient.State{}, ambient.Config{}).Addresses}, Ref{Namespace: "a", Name: "w"})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	var names []string
	for _, l := range res.Listeners {
		names = append(names, l.Name)
	}
	if got, want := strings.Join(names, ","), "connect_originate,connect_terminate,main_internal"; got != want {
		t.Errorf("listeners: got %s, want %s", got, want)
	}
	if len(res.Endpoints) != 0 || len(res.Clusters) != 3 {
		t.Errorf("got %d clusters and %d endpoints, want 3 and 0", len(res.Clusters), len(res.Endpoints))
	}
	mi := res.Listeners[2]
	if mi.FilterChainMatcher.GetOnNoMatch() != nil {
		t.Errorf("main_internal: got an authority fallback with nothing served")
	}
}

func TestPortProtocol(t *testing.T) {
	tests := []struct {
		name, appProtocol string
		want              protocol
	}{
		{"http", "", protoHTTP},
		{"http-web", "", protoHTTP},
		{"grpc", "", protoHTTP2},
		{"tcp-db", "", protoTCP},
		{"web", "", protoUnknown},
		{"", "", protoUnknown},
		{"web", "kubernetes.io/h2c", protoHTTP2},
		{"tcp", "http", protoHTTP},
	}
	for _, tc := range tests {
		svc := serviceWithPort(tc.name, tc.appProtocol)
		if got := portProtocol(svc, 80); got != tc.want {
			t.Errorf("port %q appProtocol %q: got %v, want %v", tc.name, tc.appProtocol, got, tc.want)
		}
	}
}

func TestPartition(t *testing.T) {
	pods := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	if err := pods.Add(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "wp-1",
		Labels: map[string]string{ambient.LabelGatewayName: "from-pod"}}}); err != nil {
		t.Fatal(err)
	}
	c := NewController(ControllerOptions{})
	c.pods = corelisters.NewPodLister(pods)
	labels := func(kv ...string) *structpb.Struct {
		f := map[string]*structpb.Value{}
		for i := 0; i+1 < len(kv); i += 2 {
			f[kv[i]] = structpb.NewStringValue(kv[i+1])
		}
		return &structpb.Struct{Fields: map[string]*structpb.Value{"LABELS": structpb.NewStructValue(&structpb.Struct{Fields: f})}}
	}
	tests := []struct {
		name string
		node *core.Node
		want string
	}{
		{"labels", &core.Node{Id: "waypoint~10.0.0.1~wp-2.shop~shop.svc.cluster.local", Metadata: labels(ambient.LabelGatewayName, "wp")}, "shop/wp"},
		{"pod", &core.Node{Id: "waypoint~10.0.0.1~wp-1.shop~shop.svc.cluster.local"}, "shop/from-pod"},
		{"unknown pod", &core.Node{Id: "waypoint~10.0.0.1~wp-9.shop~shop.svc.cluster.local"}, ""},
		{"ztunnel", &core.Node{Id: "ztunnel~10.0.0.1~zt.istio-system~istio-system.svc.cluster.local", Metadata: labels(ambient.LabelGatewayName, "wp")}, ""},
		{"sidecar id", &core.Node{Id: "sidecar~10.0.0.1~wp-1.shop~shop.svc.cluster.local"}, ""},
		{"short id", &core.Node{Id: "waypoint~10.0.0.1"}, ""},
		{"no namespace", &core.Node{Id: "waypoint~10.0.0.1~wp-1~shop.svc.cluster.local", Metadata: labels(ambient.LabelGatewayName, "wp")}, ""},
		{"namespace mismatch", &core.Node{Id: "waypoint~10.0.0.1~wp-2.shop~shop.svc.cluster.local", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			"NAMESPACE": structpb.NewStringValue("other"),
			"LABELS":    structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{ambient.LabelGatewayName: structpb.NewStringValue("wp")}}),
		}}}, ""},
		{"nil", nil, ""},
	}
	for _, tc := range tests {
		if got := c.Partition(tc.node); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}
