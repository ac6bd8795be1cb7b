package waypoint

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func TestSpecGateway(t *testing.T) {
	listeners := []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}
	tests := []struct {
		name    string
		spec    Spec
		want    metav1.ObjectMeta
		wantErr string
	}{
		{"namespace default", Spec{Namespace: "shop"}, metav1.ObjectMeta{Name: "waypoint", Namespace: "shop"}, ""},
		{"named, for workloads", Spec{Namespace: "shop", Name: "wp", For: "workload"},
			metav1.ObjectMeta{Name: "wp", Namespace: "shop", Labels: map[string]string{"istio.io/waypoint-for": "workload"}}, ""},
		{"service account", Spec{Namespace: "shop", ServiceAccount: "reviews"},
			metav1.ObjectMeta{Name: "reviews-waypoint", Namespace: "shop", Annotations: map[string]string{"istio.io/for-service-account": "reviews"}}, ""},
		{"service account, named", Spec{Namespace: "shop", ServiceAccount: "reviews", Name: "reviews-wp", For: "all"},
			metav1.ObjectMeta{Name: "reviews-wp", Namespace: "shop", Labels: map[string]string{"istio.io/waypoint-for": "all"},
				Annotations: map[string]string{"istio.io/for-service-account": "reviews"}}, ""},
		{"named as the service account", Spec{Namespace: "shop", ServiceAccount: "reviews", Name: "reviews"}, metav1.ObjectMeta{},
			`"reviews": the name of the service account it serves`},
		{"service account name too long for a default", Spec{Namespace: "shop", ServiceAccount: strings.Repeat("a", 60)}, metav1.ObjectMeta{},
			"choose one with --name"},
		{"name not a DNS label", Spec{Namespace: "shop", Name: "wp.1"}, metav1.ObjectMeta{}, `waypoint name "wp.1"`},
		{"reserved name", Spec{Namespace: "shop", Name: "none"}, metav1.ObjectMeta{}, `"none": reserved`},
		{"service account as a traffic type", Spec{Namespace: "shop", For: "service-account"}, metav1.ObjectMeta{}, "--service-account NAME"},
		{"bad traffic type", Spec{Namespace: "shop", For: "services"}, metav1.ObjectMeta{}, `"services": want one of all, none, service, workload`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gw, err := tt.spec.Gateway()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, gw.ObjectMeta); diff != "" {
				t.Errorf("metadata (-want +got):\n%s", diff)
			}
			if gw.Spec.GatewayClassName != "istio-waypoint" || !cmp.Equal(gw.Spec.Listeners, listeners) {
				t.Errorf("spec: got %+v, want class istio-waypoint and %+v", gw.Spec, listeners)
			}
			if gw.APIVersion != "gateway.networking.k8s.io/v1" || gw.Kind != "Gateway" {
				t.Errorf("type: got %s %s, want gateway.networking.k8s.io/v1 Gateway", gw.APIVersion, gw.Kind)
			}
		})
	}
}

func TestTrafficType(t *testing.T) {
	for _, tt := range []struct {
		gw   gatewayv1.Gateway
		want string
	}{
		{gatewayv1.Gateway{}, "service (default)"},
		{gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{"istio.io/for-service-account": "a"}}}, "all (default)"},
		{gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"istio.io/waypoint-for": "workload"}}}, "workload"},
	} {
		if got := TrafficType(&tt.gw); got != tt.want {
			t.Errorf("TrafficType(%v): got %q, want %q", tt.gw.ObjectMeta, got, tt.want)
		}
	}
}
