package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

// documents splits a YAML file into its documents.
func documents(t *testing.T, path string) [][]byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, d := range bytes.Split(raw, []byte("\n---\n")) {
		if len(bytes.TrimSpace(d)) > 0 {
			out = append(out, d)
		}
	}
	return out
}

// versionServices are the Services of Istio's bookinfo-versions.yaml,
// which the HTTPRoute samples route to.
var versionServices = []string{"details-v1", "productpage-v1", "ratings-v1", "reviews-v1", "reviews-v2", "reviews-v3"}

// summarizeRoute writes an HTTPRoute as "parent: match → backend weight,
// ...; ...", one rule after the other.
func summarizeRoute(t *testing.T, r *gatewayv1.HTTPRoute) string {
	t.Helper()
	if len(r.Spec.ParentRefs) != 1 {
		t.Fatalf("HTTPRoute %s: got %d parents, want 1", r.Name, len(r.Spec.ParentRefs))
	}
	p := r.Spec.ParentRefs[0]
	if p.Group == nil || *p.Group != "" || p.Kind == nil || *p.Kind != "Service" || p.Port == nil || *p.Port != 9080 {
		t.Errorf("HTTPRoute %s: parent %+v, want core Service on port 9080", r.Name, p)
	}
	var rules []string
	for _, rule := range r.Spec.Rules {
		match := "*"
		for _, m := range rule.Matches {
			for _, h := range m.Headers {
				match = fmt.Sprintf("%s=%s", strings.ToLower(string(h.Name)), h.Value)
			}
		}
		var backends []string
		for _, b := range rule.BackendRefs {
			if !slices.Contains(versionServices, string(b.Name)) {
				t.Errorf("HTTPRoute %s: backend %s is none of bookinfo-versions.yaml's Services %v", r.Name, b.Name, versionServices)
			}
			if b.Port == nil || *b.Port != 9080 {
				t.Errorf("HTTPRoute %s: backend %s without port 9080", r.Name, b.Name)
			}
			w := ""
			if b.Weight != nil {
				w = fmt.Sprintf(" %d", *b.Weight)
			}
			backends = append(backends, string(b.Name)+w)
		}
		rules = append(rules, match+" → "+strings.Join(backends, ", "))
	}
	return fmt.Sprintf("%s: %s", p.Name, strings.Join(rules, "; "))
}

// subsets are the subsets of destination-rule-all.yaml by host.
func subsets(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, d := range documents(t, "networking/destination-rule-all.yaml") {
		var dr networkingv1.DestinationRule
		if err := yaml.UnmarshalStrict(d, &dr); err != nil {
			t.Fatalf("destination-rule-all.yaml: %v", err)
		}
		for _, s := range dr.Spec.Subsets {
			if s.Labels["version"] != s.Name {
				t.Errorf("DestinationRule %s subset %s: selects version %q, want %q", dr.Name, s.Name, s.Labels["version"], s.Name)
			}
			out[dr.Spec.Host] = append(out[dr.Spec.Host], s.Name)
		}
	}
	return out
}

// summarizeVirtualService writes a VirtualService as summarizeRoute
// writes an HTTPRoute, subsets as <host>-<subset>, faults in brackets.
func summarizeVirtualService(t *testing.T, vs *networkingv1.VirtualService, sub map[string][]string) string {
	t.Helper()
	var rules []string
	for _, h := range vs.Spec.Http {
		match := "*"
		for _, m := range h.Match {
			for name, v := range m.Headers {
				match = fmt.Sprintf("%s=%s", name, v.GetExact())
			}
		}
		if f := h.Fault; f != nil {
			if d := f.Delay; d != nil {
				match += fmt.Sprintf(" [delay %s %.0f%%]", d.GetFixedDelay().AsDuration(), d.GetPercentage().GetValue())
			}
			if a := f.Abort; a != nil {
				match += fmt.Sprintf(" [abort %d %.0f%%]", a.GetHttpStatus(), a.GetPercentage().GetValue())
			}
		}
		var dests []string
		for _, d := range h.Route {
			if !slices.Contains(sub[d.Destination.Host], d.Destination.Subset) {
				t.Errorf("VirtualService %s: subset %s of %s is not in destination-rule-all.yaml (%v)", vs.Name, d.Destination.Subset, d.Destination.Host, sub[d.Destination.Host])
			}
			w := ""
			if d.Weight != 0 {
				w = fmt.Sprintf(" %d", d.Weight)
			}
			dests = append(dests, d.Destination.Host+"-"+d.Destination.Subset+w)
		}
		rules = append(rules, match+" → "+strings.Join(dests, ", "))
	}
	return fmt.Sprintf("%s: %s", strings.Join(vs.Spec.Hosts, ","), strings.Join(rules, "; "))
}

// TestTrafficSamples: the traffic-management samples are valid objects
// of their APIs (strict decoding: no unknown field) and say what Istio's
// samples of the same name say.
func TestTrafficSamples(t *testing.T) {
	want := map[string][]string{
		"gateway-api/route-all-v1.yaml":                 {"reviews: * → reviews-v1", "productpage: * → productpage-v1", "ratings: * → ratings-v1", "details: * → details-v1"},
		"gateway-api/route-reviews-v1.yaml":             {"reviews: * → reviews-v1"},
		"gateway-api/route-reviews-v3.yaml":             {"reviews: * → reviews-v3"},
		"gateway-api/route-reviews-50-v3.yaml":          {"reviews: * → reviews-v1 50, reviews-v3 50"},
		"gateway-api/route-reviews-90-10.yaml":          {"reviews: * → reviews-v1 90, reviews-v2 10"},
		"gateway-api/route-reviews-test-v2.yaml":        {"reviews: end-user=jason → reviews-v2; * → reviews-v1"},
		"gateway-api/route-reviews-jason-v2-50-v3.yaml": {"reviews: end-user=jason → reviews-v2; * → reviews-v1 50, reviews-v3 50"},
		"networking/virtual-service-all-v1.yaml": {"productpage: * → productpage-v1", "reviews: * → reviews-v1",
			"ratings: * → ratings-v1", "details: * → details-v1"},
		"networking/virtual-service-reviews-v3.yaml":          {"reviews: * → reviews-v3"},
		"networking/virtual-service-reviews-50-v3.yaml":       {"reviews: * → reviews-v1 50, reviews-v3 50"},
		"networking/virtual-service-reviews-90-10.yaml":       {"reviews: * → reviews-v1 90, reviews-v2 10"},
		"networking/virtual-service-reviews-test-v2.yaml":     {"reviews: end-user=jason → reviews-v2; * → reviews-v1"},
		"networking/virtual-service-reviews-jason-v2-v3.yaml": {"reviews: end-user=jason → reviews-v2; * → reviews-v3"},
		"networking/virtual-service-ratings-test-delay.yaml":  {"ratings: end-user=jason [delay 7s 100%] → ratings-v1; * → ratings-v1"},
		"networking/virtual-service-ratings-test-abort.yaml":  {"ratings: end-user=jason [abort 500 100%] → ratings-v1; * → ratings-v1"},
	}
	files, err := filepath.Glob("*/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sub := subsets(t)
	for _, f := range files {
		if strings.HasPrefix(filepath.Base(f), "destination-rule-") {
			continue
		}
		t.Run(f, func(t *testing.T) {
			var got []string
			for _, d := range documents(t, f) {
				switch {
				case strings.HasPrefix(f, "gateway-api/"):
					var r gatewayv1.HTTPRoute
					if err := yaml.UnmarshalStrict(d, &r); err != nil {
						t.Fatalf("decode HTTPRoute: %v", err)
					}
					if r.Kind != "HTTPRoute" || r.APIVersion != "gateway.networking.k8s.io/v1" {
						t.Errorf("got %s %s, want gateway.networking.k8s.io/v1 HTTPRoute", r.APIVersion, r.Kind)
					}
					got = append(got, summarizeRoute(t, &r))
				default:
					var vs networkingv1.VirtualService
					if err := yaml.UnmarshalStrict(d, &vs); err != nil {
						t.Fatalf("decode VirtualService: %v", err)
					}
					if vs.Kind != "VirtualService" || vs.APIVersion != "networking.istio.io/v1" {
						t.Errorf("got %s %s, want networking.istio.io/v1 VirtualService", vs.APIVersion, vs.Kind)
					}
					got = append(got, summarizeVirtualService(t, &vs, sub))
				}
			}
			w, ok := want[f]
			if !ok {
				t.Fatalf("no expectation for %s: add it to the test", f)
			}
			if diff := cmp.Diff(w, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	for f := range want {
		if !slices.Contains(files, f) {
			t.Errorf("sample %s: missing", f)
		}
	}
}

// TestPolicySamples: the policies decode strictly; the L7 one targets
// the ratings Service and denies POST and DELETE.
func TestPolicySamples(t *testing.T) {
	for _, f := range []string{"ratings-policy.yaml", "ratings-read-only.yaml"} {
		for _, d := range documents(t, f) {
			var ap securityv1.AuthorizationPolicy
			if err := yaml.UnmarshalStrict(d, &ap); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if f != "ratings-read-only.yaml" {
				continue
			}
			refs := ap.Spec.GetTargetRefs()
			if len(refs) != 1 || refs[0].GetKind() != "Service" || refs[0].GetName() != "ratings" || ap.Spec.GetAction().String() != "DENY" {
				t.Errorf("%s: got %v %v, want a DENY targeting Service ratings", f, refs, ap.Spec.GetAction())
			}
			if got := ap.Spec.GetRules()[0].GetTo()[0].GetOperation().GetMethods(); !slices.Equal(got, []string{"POST", "DELETE"}) {
				t.Errorf("%s: methods %v, want POST and DELETE", f, got)
			}
		}
	}
}
