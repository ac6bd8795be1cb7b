package waypoint

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/gateway"
	"github.com/ambitmesh/ambit/istiod/meshconfig"
	"github.com/ambitmesh/ambit/istiod/telemetry"
)

var update = flag.Bool("update", false, "rewrite testdata/<case>/golden.json from the builder's output")

// objects are the Kubernetes objects of one test input.
type objects struct {
	state      ambient.State
	services   map[string]*corev1.Service
	httpRoutes []*gatewayv1.HTTPRoute
	grpcRoutes []*gatewayv1.GRPCRoute
	grants     []*gatewayv1.ReferenceGrant
	policies   []*securityv1.AuthorizationPolicy
	vss        []*networkingv1.VirtualService
	drs        []*networkingv1.DestinationRule
	podLabels  map[string]map[string]string // by workload uid
	// mesh is the YAML of ConfigMap istio's "mesh" key; telemetries the
	// Telemetry objects.
	mesh        string
	telemetries []*telemetryv1.Telemetry
}

var decoder = func() runtime.Decoder {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, discoveryv1.AddToScheme, gatewayv1.Install, securityv1.AddToScheme, networkingv1.AddToScheme, telemetryv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return serializer.NewCodecFactory(s).UniversalDeserializer()
}()

// loadObjects reads a multi-document YAML of Kubernetes objects.
func loadObjects(r io.Reader) (*objects, error) {
	o := &objects{services: map[string]*corev1.Service{}, podLabels: map[string]map[string]string{}}
	rd := utilyaml.NewYAMLReader(bufioReader(r))
	for i := 0; ; i++ {
		doc, err := rd.Read()
		if errors.Is(err, io.EOF) {
			return o, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read document %d: %w", i, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 || strings.TrimSpace(string(doc)) == "---" {
			continue
		}
		obj, _, err := decoder.Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("decode document %d: %w", i, err)
		}
		switch v := obj.(type) {
		case *corev1.Namespace:
			o.state.Namespaces = append(o.state.Namespaces, v)
		case *corev1.Pod:
			o.state.Pods = append(o.state.Pods, v)
			o.podLabels[ambient.PodUID(ambient.Config{}.WithDefaults().ClusterID, v.Namespace, v.Name)] = v.Labels
		case *corev1.Service:
			o.state.Services = append(o.state.Services, v)
			o.services[v.Namespace+"/"+v.Name] = v
		case *discoveryv1.EndpointSlice:
			o.state.EndpointSlices = append(o.state.EndpointSlices, v)
		case *corev1.Node:
			o.state.Nodes = append(o.state.Nodes, v)
		case *corev1.ServiceAccount:
			o.state.ServiceAccounts = append(o.state.ServiceAccounts, v)
		case *gatewayv1.Gateway:
			o.state.Gateways = append(o.state.Gateways, v)
		case *gatewayv1.HTTPRoute:
			o.httpRoutes = append(o.httpRoutes, v)
		case *gatewayv1.GRPCRoute:
			o.grpcRoutes = append(o.grpcRoutes, v)
		case *gatewayv1.ReferenceGrant:
			o.grants = append(o.grants, v)
		case *securityv1.AuthorizationPolicy:
			o.policies = append(o.policies, v)
		case *networkingv1.VirtualService:
			o.vss = append(o.vss, v)
		case *networkingv1.DestinationRule:
			o.drs = append(o.drs, v)
		case *telemetryv1.Telemetry:
			o.telemetries = append(o.telemetries, v)
		case *corev1.ConfigMap:
			if v.Name != meshconfig.ConfigMapName {
				return nil, fmt.Errorf("document %d: ConfigMap %s, want only %s (MeshConfig)", i, v.Name, meshconfig.ConfigMapName)
			}
			o.mesh = v.Data[meshconfig.ConfigMapKey]
		default:
			return nil, fmt.Errorf("document %d: unsupported kind %T", i, obj)
		}
	}
}

// waypointOf is the case's waypoint: the first Gateway of the
// istio-waypoint class in the input.
func (o *objects) waypointOf() (Ref, bool) {
	for _, gw := range o.state.Gateways {
		if string(gw.Spec.GatewayClassName) == gateway.WaypointClass {
			return Ref{Namespace: gw.Namespace, Name: gw.Name}, true
		}
	}
	return Ref{}, false
}

func (o *objects) input(cfg ambient.Config) *Input {
	mesh, err := meshconfig.Parse(o.mesh)
	if err != nil {
		panic(err) // the test's own input
	}
	return &Input{Config: cfg, Telemetry: telemetry.NewIndex(mesh, o.telemetries), Addresses: ambient.Build(o.state, cfg).Addresses,
		Service:    func(ns, name string) *corev1.Service { return o.services[ns+"/"+name] },
		HTTPRoutes: o.httpRoutes, GRPCRoutes: o.grpcRoutes, ReferenceGrants: o.grants, AuthorizationPolicies: o.policies,
		VirtualServices: o.vss, DestinationRules: o.drs,
		WorkloadLabels: func(uid string) map[string]string { return o.podLabels[uid] }}
}

func TestGolden(t *testing.T) {
	dirs, err := filepath.Glob("testdata/*/input.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) == 0 {
		t.Fatal("no testdata/*/input.yaml")
	}
	for _, in := range dirs {
		dir := filepath.Dir(in)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			f, err := os.Open(in)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			objs, err := loadObjects(f)
			if err != nil {
				t.Fatalf("load %s: %v", in, err)
			}
			ref, ok := objs.waypointOf()
			if !ok {
				t.Fatalf("%s has no Gateway of class %s", in, gateway.WaypointClass)
			}
			in := objs.input(ambient.Config{})
			res, err := Build(in, ref)
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			bs := computeBase(in, in.Config.WithDefaults(), nil)
			_, statuses := bs.attach(in, in.Config.WithDefaults())
			compareFile(t, filepath.Join(dir, "status.json"), statusJSON(t, statuses))
			compareFile(t, filepath.Join(dir, "istio-status.json"), objectStatusJSON(t, bs.istioStatus))
			got, err := res.JSON()
			if err != nil {
				t.Fatal(err)
			}
			again, err := res.JSON()
			if err != nil || !bytes.Equal(got, again) {
				t.Fatalf("JSON is not stable (err %v)", err)
			}
			compareFile(t, filepath.Join(dir, "golden.json"), got)
			// The Go waypoint's tests run the same files.
			compareFile(t, filepath.Join("..", "..", "waypoint", "testdata", "istiod", filepath.Base(dir)+".json"), got)
			var notes []byte
			if len(res.PolicyNotes) > 0 {
				if notes, err = json.MarshalIndent(res.PolicyNotes, "", "  "); err != nil {
					t.Fatal(err)
				}
				notes = append(notes, '\n')
			}
			compareFile(t, filepath.Join(dir, "policy-status.json"), notes)
		})
	}
}

// compareFile compares got with a golden file (none: got is nil), or
// rewrites it with -update.
func compareFile(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if got == nil {
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
			return
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && got == nil {
		return
	}
	if err != nil {
		t.Fatalf("read golden (run with -update to create it): %v", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs (-want +got; -update rewrites it):\n%s", path, diff)
	}
}

// statusJSON renders route statuses, nil when there are none.
func statusJSON(t *testing.T, st []RouteStatus) []byte {
	t.Helper()
	if len(st) == 0 {
		return nil
	}
	type cond struct{ Type, Status, Reason, Message string }
	type parent struct {
		Parent     string
		Conditions []cond
	}
	type route struct {
		Route   string
		Parents []parent
	}
	var out []route
	for _, s := range st {
		r := route{Route: s.Kind + "/" + s.Namespace + "/" + s.Name}
		for _, p := range s.Parents {
			pp := parent{Parent: fmt.Sprintf("%s/%s port %d", ptrOr(p.Parent.Namespace, gatewayv1.Namespace(s.Namespace)), p.Parent.Name, ptrOr(p.Parent.Port, 0))}
			for _, c := range []metav1.Condition{p.Accepted, p.ResolvedRefs} {
				pp.Conditions = append(pp.Conditions, cond{c.Type, string(c.Status), c.Reason, c.Message})
			}
			r.Parents = append(r.Parents, pp)
		}
		out = append(out, r)
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// objectStatusJSON renders the status of Istio objects, nil when there
// is none.
func objectStatusJSON(t *testing.T, st []ObjectStatus) []byte {
	t.Helper()
	if len(st) == 0 {
		return nil
	}
	type cond struct{ Type, Status, Reason, Message string }
	type object struct {
		Object     string
		Conditions []cond
	}
	var out []object
	for _, s := range st {
		o := object{Object: s.Kind + "/" + s.Namespace + "/" + s.Name}
		for _, c := range s.Conditions {
			o.Conditions = append(o.Conditions, cond{c.Type, string(c.Status), c.Reason, c.Message})
		}
		out = append(out, o)
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }

func serviceWithPort(name, appProtocol string) *corev1.Service {
	p := corev1.ServicePort{Name: name, Port: 80}
	if appProtocol != "" {
		p.AppProtocol = &appProtocol
	}
	return &corev1.Service{Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{p}}}
}
