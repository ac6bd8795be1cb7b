package waypoint_test

import (
	"net/http"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	metadatav3 "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	tracingtype "github.com/envoyproxy/go-control-plane/envoy/type/tracing/v3"

	"github.com/ambitmesh/ambit/waypoint"
)

// shadowRBAC is an HTTP RBAC filter as istiod writes one for dry-run
// AuthorizationPolicies: shadow rules only, with Istio's stat prefix.
func shadowRBAC(name, statPrefix string, action rbacv3.RBAC_Action, policies map[string]*rbacv3.Policy) *hcmFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&rbachttp.RBAC{
		ShadowRules: &rbacv3.RBAC{Action: action, Policies: policies}, ShadowRulesStatPrefix: statPrefix})}}
}

// pathPolicy matches requests to paths under p from anyone.
func pathPolicy(p string) *rbacv3.Policy {
	return &rbacv3.Policy{
		Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_UrlPath{UrlPath: &pathMatcher{Rule: &pathMatcherPath{Path: prefix(p)}}}}},
		Principals:  []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}}}
}

// rbacMetadataTag is one of Istio's dry-run span tags: a key of the RBAC
// filter's dynamic metadata.
func rbacMetadataTag(tag, key string) *tracingtype.CustomTag {
	return &tracingtype.CustomTag{Tag: tag, Type: &tracingtype.CustomTag_Metadata_{Metadata: &tracingtype.CustomTag_Metadata{
		Kind: &metadatav3.MetadataKind{Kind: &metadatav3.MetadataKind_Request_{Request: &metadatav3.MetadataKind_Request{}}},
		MetadataKey: &metadatav3.MetadataKey{Key: "envoy.filters.http.rbac",
			Path: []*metadatav3.MetadataKey_PathSegment{{Segment: &metadatav3.MetadataKey_PathSegment_Key{Key: key}}}}}}}
}

func valueTag(tag, value string) *tracingtype.CustomTag {
	return &tracingtype.CustomTag{Tag: tag, Type: &tracingtype.CustomTag_Value{Value: value}}
}

// TestDryRun: Istio's dry-run AuthorizationPolicies (RBAC shadow rules)
// never refuse a request, and their results show where Istio's task
// shows them: the span tags istio.authorization.dry_run.*, and the
// counters envoy_http_rbac{authz_dry_run_action, authz_dry_run_result}.
// The span also carries Istio's peer tags, read from the peers' workloads
// (%FILTER_STATE(downstream_peer_obj:FIELD:...)%), and a value tag reads
// the request's dynamic metadata through the access log's operators.
func TestDryRun(t *testing.T) {
	collector, spans := zipkinCollector(t)
	edit := func(h *hcmv3.HttpConnectionManager) {
		tracingHCM(100)(h)
		h.Tracing.CustomTags = append(h.Tracing.CustomTags,
			rbacMetadataTag("istio.authorization.dry_run.allow_policy.name", "istio_dry_run_allow_shadow_effective_policy_id"),
			rbacMetadataTag("istio.authorization.dry_run.allow_policy.result", "istio_dry_run_allow_shadow_engine_result"),
			rbacMetadataTag("istio.authorization.dry_run.deny_policy.name", "istio_dry_run_deny_shadow_effective_policy_id"),
			rbacMetadataTag("istio.authorization.dry_run.deny_policy.result", "istio_dry_run_deny_shadow_engine_result"),
			valueTag("istio.source_workload", "%FILTER_STATE(downstream_peer_obj:FIELD:workload)%"),
			valueTag("istio.source_namespace", "%FILTER_STATE(downstream_peer_obj:FIELD:namespace)%"),
			valueTag("istio.source_canonical_service", "%FILTER_STATE(downstream_peer_obj:FIELD:service)%"),
			valueTag("istio.source_app", "%FILTER_STATE(downstream_peer_obj:FIELD:app)%"),
			valueTag("istio.destination_workload", "%FILTER_STATE(upstream_peer_obj:FIELD:workload)%"),
			valueTag("istio.destination_canonical_revision", "%FILTER_STATE(upstream_peer_obj:FIELD:revision)%"),
			valueTag("istio.destination_workload_type", "%FILTER_STATE(upstream_peer_obj:FIELD:type)%"),
			valueTag("istio.destination_instance_name", "%FILTER_STATE(upstream_peer_obj:FIELD:name)%"),
			valueTag("dry_run_deny", "deny=%DYNAMIC_METADATA(envoy.filters.http.rbac:istio_dry_run_deny_shadow_engine_result)%"),
		)
	}
	e := tracedEnv(t, edit, zipkinCluster, collector, func(e *env) {
		e.cfg.ports[0].httpFilters = []*hcmFilter{
			shadowRBAC("rbac-deny", "istio_dry_run_deny_", rbacv3.RBAC_DENY, map[string]*rbacv3.Policy{"ns[shop]-policy[deny-admin]-rule[0]": pathPolicy("/admin")}),
			shadowRBAC("rbac-allow", "istio_dry_run_allow_", rbacv3.RBAC_ALLOW, map[string]*rbacv3.Policy{"ns[shop]-policy[allow-public]-rule[0]": pathPolicy("/public")}),
		}
	})
	e.wp.Stats().SetWorkloads(waypoint.NewWorkloads(meshWorkloads(e.ip)))
	c := e.client(t, clientID)

	// Both dry-run policies would refuse /admin: it goes through.
	expectStatus(t, c.do(t, get(t, "/admin")), http.StatusOK)
	peers := map[string]string{
		"istio.source_workload": "client-v1", "istio.source_namespace": "shop", "istio.source_canonical_service": "client",
		"istio.destination_workload": "server-v1", "istio.destination_canonical_revision": "v1",
		"istio.destination_workload_type": "deployment", "istio.destination_instance_name": "server-v1-abc",
	}
	s := receive(t, spans)
	want := map[string]string{
		"istio.authorization.dry_run.deny_policy.name":    "ns[shop]-policy[deny-admin]-rule[0]",
		"istio.authorization.dry_run.deny_policy.result":  "denied",
		"istio.authorization.dry_run.allow_policy.result": "denied",
		"dry_run_deny": "deny=denied",
	}
	expectSpanTags(t, "/admin", s.Tags, want, peers, "istio.authorization.dry_run.allow_policy.name", "istio.source_app")

	// Both would let /public through; the ALLOW policy that matched is named.
	expectStatus(t, c.do(t, get(t, "/public")), http.StatusOK)
	s = receive(t, spans)
	want = map[string]string{
		"istio.authorization.dry_run.allow_policy.name":   "ns[shop]-policy[allow-public]-rule[0]",
		"istio.authorization.dry_run.allow_policy.result": "allowed",
		"istio.authorization.dry_run.deny_policy.result":  "allowed",
		"dry_run_deny": "deny=allowed",
	}
	expectSpanTags(t, "/public", s.Tags, want, peers, "istio.authorization.dry_run.deny_policy.name", "istio.source_app")

	mfs := scrape(t, e.wp)
	for _, tc := range []struct{ action, result string }{{"deny", "denied"}, {"deny", "allowed"}, {"allow", "denied"}, {"allow", "allowed"}} {
		m := find(t, mfs, "envoy_http_rbac", map[string]string{"authz_dry_run_action": tc.action, "authz_dry_run_result": tc.result})
		if got := m.GetCounter().GetValue(); got != 1 {
			t.Errorf("envoy_http_rbac{authz_dry_run_action=%q, authz_dry_run_result=%q}: got %v, want 1", tc.action, tc.result, got)
		}
	}
	if got := counter(t, e, "envoy_http_rbac_denied"); got != 0 {
		t.Errorf("envoy_http_rbac_denied: got %v, want 0 (dry-run rules refuse nothing)", got)
	}
}

// expectSpanTags checks a span's tags: want and peers set as given, and
// none of absent.
func expectSpanTags(t *testing.T, req string, got map[string]string, want, peers map[string]string, absent ...string) {
	t.Helper()
	for _, m := range []map[string]string{want, peers} {
		for k, v := range m {
			if got[k] != v {
				t.Errorf("%s: span tag %s: got %q, want %q", req, k, got[k], v)
			}
		}
	}
	for _, k := range absent {
		if v, ok := got[k]; ok {
			t.Errorf("%s: span tag %s: got %q, want none", req, k, v)
		}
	}
}
