package xds

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/ambitmesh/ambit/api/security"
	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// item is one resource translated into the model. Exactly one of
// workload, service and policy is set.
type item struct {
	version  string
	workload *config.Workload
	service  *config.Service
	policy   *config.Authorization
}

// translate decodes and translates one resource of a response of type
// typeURL. What it accepts passes config.State.Validate on its own; only
// conflicts between resources (a duplicate address, say) are left for the
// whole state's validation.
func translate(typeURL string, r *discovery.Resource) (*item, error) {
	body := r.GetResource()
	if body == nil {
		return nil, errors.New("no resource body")
	}
	if body.GetTypeUrl() != typeURL {
		return nil, fmt.Errorf("resource of type %q in a response of type %s", body.GetTypeUrl(), typeURL)
	}
	var it *item
	switch typeURL {
	case AddressType:
		var a workload.Address
		if err := proto.Unmarshal(body.GetValue(), &a); err != nil {
			return nil, fmt.Errorf("decode istio.workload.Address: %w", err)
		}
		var err error
		if it, err = fromAddress(&a); err != nil {
			return nil, err
		}
	case AuthorizationType:
		var a security.Authorization
		if err := proto.Unmarshal(body.GetValue(), &a); err != nil {
			return nil, fmt.Errorf("decode istio.security.Authorization: %w", err)
		}
		p, err := fromAuthorization(&a)
		if err != nil {
			return nil, err
		}
		it = &item{policy: p}
	default:
		return nil, fmt.Errorf("unknown type %s", typeURL)
	}
	var st config.State
	it.addTo(&st)
	if err := st.Validate(); err != nil {
		return nil, err
	}
	it.version = r.GetVersion()
	return it, nil
}

func fromAddress(a *workload.Address) (*item, error) {
	switch t := a.GetType().(type) {
	case *workload.Address_Workload:
		w, err := fromWorkload(t.Workload)
		if err != nil {
			return nil, err
		}
		return &item{workload: w}, nil
	case *workload.Address_Service:
		s, err := fromService(t.Service)
		if err != nil {
			return nil, err
		}
		return &item{service: s}, nil
	}
	return nil, errors.New("address is neither a workload nor a service")
}

func (it *item) addTo(st *config.State) {
	switch {
	case it.workload != nil:
		st.Workloads = append(st.Workloads, it.workload)
	case it.service != nil:
		st.Services = append(st.Services, it.service)
	case it.policy != nil:
		st.Policies = append(st.Policies, it.policy)
	}
}

// fromWorkload translates an istio.workload.Workload, with its waypoint.
// Fields the model has no place for (hostname, network gateway, locality, workload type,
// application tunnel, cluster id, capacity, extensions) are
// not carried over.
//
// A tunnel protocol other than NONE and HBONE is kept, not refused:
// LEGACY_ISTIO_MTLS (a sidecar) as such, a number this ztunnel does not
// know as UNKNOWN. Either makes connections to the workload fail (see
// config.Workload.Reachable). Refusing the resource would instead leave
// the address unknown, and connections to it would pass through in plain
// text to a workload that expects mutual TLS.
func fromWorkload(pb *workload.Workload) (*config.Workload, error) {
	w := &config.Workload{
		UID:                   pb.GetUid(),
		Name:                  pb.GetName(),
		Namespace:             pb.GetNamespace(),
		Network:               pb.GetNetwork(),
		TrustDomain:           pb.GetTrustDomain(),
		ServiceAccount:        pb.GetServiceAccount(),
		Node:                  pb.GetNode(),
		WorkloadName:          pb.GetWorkloadName(),
		CanonicalName:         pb.GetCanonicalName(),
		CanonicalRevision:     pb.GetCanonicalRevision(),
		AuthorizationPolicies: slices.Clone(pb.GetAuthorizationPolicies()),
		NativeTunnel:          pb.GetNativeTunnel(),
	}
	for i, b := range pb.GetAddresses() {
		a, err := addr(b)
		if err != nil {
			return nil, fmt.Errorf("workload %s: address %d: %w", pb.GetUid(), i, err)
		}
		w.Addresses = append(w.Addresses, a)
	}
	switch pb.GetTunnelProtocol() {
	case workload.TunnelProtocol_NONE:
		w.TunnelProtocol = config.TunnelNone
	case workload.TunnelProtocol_HBONE:
		w.TunnelProtocol = config.TunnelHBONE
	case workload.TunnelProtocol_LEGACY_ISTIO_MTLS:
		w.TunnelProtocol = config.TunnelLegacyIstioMTLS
	default:
		w.TunnelProtocol = config.TunnelUnknown
	}
	switch pb.GetNetworkMode() {
	case workload.NetworkMode_STANDARD:
	case workload.NetworkMode_HOST_NETWORK:
		w.NetworkMode = config.NetworkHost
	default:
		return nil, fmt.Errorf("workload %s: network_mode %d, want STANDARD or HOST_NETWORK", pb.GetUid(), pb.GetNetworkMode())
	}
	switch pb.GetStatus() {
	case workload.WorkloadStatus_HEALTHY:
		w.Status = config.Healthy
	case workload.WorkloadStatus_UNHEALTHY:
		w.Status = config.Unhealthy
	default:
		return nil, fmt.Errorf("workload %s: status %d, want HEALTHY or UNHEALTHY", pb.GetUid(), pb.GetStatus())
	}
	if pb.GetWaypoint() != nil {
		wp, err := fromGatewayAddress(pb.GetWaypoint())
		if err != nil {
			return nil, fmt.Errorf("workload %s: %w", pb.GetUid(), err)
		}
		w.Waypoint = wp
	}
	// Sorted so that errors name the same service every time.
	for _, key := range slices.Sorted(maps.Keys(pb.GetServices())) {
		ports, err := ports(pb.GetServices()[key].GetPorts())
		if err != nil {
			return nil, fmt.Errorf("workload %s: service %s: %w", pb.GetUid(), key, err)
		}
		if w.Services == nil {
			w.Services = map[string]config.PortList{}
		}
		w.Services[key] = config.PortList{Ports: ports}
	}
	return w, nil
}

// fromService translates an istio.workload.Service, with its visibility,
// its addresses' prefix lengths and its waypoint. Not carried over, as the
// model has no place for them: weighted_waypoints (waypoint names the
// main one, which takes every connection here) and ingress_use_waypoint
// (for gateways, not ztunnel),
// load_balancing (no locality preference or PASSTHROUGH mode yet),
// subject_alt_names, ip_families, extensions, canonical (a DNS matter)
// and the ports' app_protocol (a hint for L7).
func fromService(pb *workload.Service) (*config.Service, error) {
	s := &config.Service{
		Name:      pb.GetName(),
		Namespace: pb.GetNamespace(),
		Hostname:  pb.GetHostname(),
	}
	name := pb.GetNamespace() + "/" + pb.GetHostname()
	for i, na := range pb.GetAddresses() {
		a, err := addr(na.GetAddress())
		if err != nil {
			return nil, fmt.Errorf("service %s: address %d: %w", name, i, err)
		}
		ca := config.NetworkAddress{Network: na.GetNetwork(), Address: a}
		if na.Length != nil {
			n := na.GetLength()
			if int64(n) > int64(a.BitLen()) {
				return nil, fmt.Errorf("service %s: address %d: prefix length %d longer than the %d bits of %s", name, i, n, a.BitLen(), a)
			}
			ca.Length = &n
		}
		s.Addresses = append(s.Addresses, ca)
	}
	switch pb.GetVisibility() {
	case workload.Service_PUBLIC:
		s.Visibility = config.VisibilityPublic
	case workload.Service_NAMESPACE:
		s.Visibility = config.VisibilityNamespace
	default:
		return nil, fmt.Errorf("service %s: visibility %d, want PUBLIC or NAMESPACE", name, pb.GetVisibility())
	}
	var err error
	if s.Ports, err = ports(pb.GetPorts()); err != nil {
		return nil, fmt.Errorf("service %s: %w", name, err)
	}
	if pb.GetWaypoint() != nil {
		if s.Waypoint, err = fromGatewayAddress(pb.GetWaypoint()); err != nil {
			return nil, fmt.Errorf("service %s: %w", name, err)
		}
	}
	return s, nil
}

// fromGatewayAddress translates a waypoint's istio.workload.GatewayAddress.
// A waypoint that cannot be read fails the resource: dropping it would
// send the traffic bound to the waypoint around it.
func fromGatewayAddress(pb *workload.GatewayAddress) (*config.GatewayAddress, error) {
	g := &config.GatewayAddress{HBONEPort: pb.GetHboneMtlsPort()}
	if g.HBONEPort > 65535 {
		return nil, fmt.Errorf("waypoint: hbone_mtls_port %d, want 1 to 65535", g.HBONEPort)
	}
	switch d := pb.GetDestination().(type) {
	case *workload.GatewayAddress_Hostname:
		g.Hostname, g.Namespace = d.Hostname.GetHostname(), d.Hostname.GetNamespace()
		if g.Hostname == "" || g.Namespace == "" {
			return nil, fmt.Errorf("waypoint: hostname %q in namespace %q, want both", g.Hostname, g.Namespace)
		}
	case *workload.GatewayAddress_Address:
		a, err := addr(d.Address.GetAddress())
		if err != nil {
			return nil, fmt.Errorf("waypoint: address: %w", err)
		}
		g.Address = &config.NetworkAddress{Network: d.Address.GetNetwork(), Address: a}
	default:
		return nil, errors.New("waypoint: neither a hostname nor an address")
	}
	return g, nil
}

// fromAuthorization translates an istio.security.Authorization. What it
// cannot understand fails closed instead of failing the resource, which
// would leave a new DENY policy out altogether: a field or extension this
// model lacks, or an unknown action, is recorded in the policy's Unknown
// (an ALLOW then allows nothing, a DENY denies everything in its scope),
// and a match that cannot be understood in its match's Unknown. Only a
// policy whose scope is unknown, which cannot be placed at all, is an
// error.
func fromAuthorization(pb *security.Authorization) (*config.Authorization, error) {
	name := pb.GetNamespace() + "/" + pb.GetName()
	a := &config.Authorization{Name: pb.GetName(), Namespace: pb.GetNamespace(), DryRun: pb.GetDryRun()}
	switch pb.GetScope() {
	case security.Scope_GLOBAL:
		a.Scope = config.ScopeGlobal
	case security.Scope_NAMESPACE:
		a.Scope = config.ScopeNamespace
	case security.Scope_WORKLOAD_SELECTOR:
		a.Scope = config.ScopeWorkloadSelector
	default:
		return nil, fmt.Errorf("policy %s: scope %d, want GLOBAL, NAMESPACE or WORKLOAD_SELECTOR", name, pb.GetScope())
	}
	var unknown []string
	switch pb.GetAction() {
	case security.Action_ALLOW:
		a.Action = config.Allow
	case security.Action_DENY:
		a.Action = config.Deny
	default:
		// Neither allowing nor denying is known to be meant: deny.
		a.Action = config.Deny
		unknown = append(unknown, fmt.Sprintf("action %d, want ALLOW or DENY", pb.GetAction()))
	}
	unknown = append(unknown, notUnderstood(pb, pb.GetExtensions())...)
	for i, r := range pb.GetRules() {
		unknown = append(unknown, prefixed(fmt.Sprintf("rule %d: ", i), notUnderstood(r, nil))...)
		var rule config.Rule
		for j, c := range r.GetClauses() {
			unknown = append(unknown, prefixed(fmt.Sprintf("rule %d clause %d: ", i, j), notUnderstood(c, nil))...)
			var clause config.Clause
			for k, m := range c.GetMatches() {
				match := fromMatch(m)
				if match.Unknown != "" {
					match.Unknown = fmt.Sprintf("rule %d clause %d match %d: %s", i, j, k, match.Unknown)
				}
				clause.Matches = append(clause.Matches, match)
			}
			rule.Clauses = append(rule.Clauses, clause)
		}
		a.Rules = append(a.Rules, rule)
	}
	a.Unknown = strings.Join(unknown, "; ")
	return a, nil
}

// notUnderstood describes what msg carries that translation would drop:
// fields unknown to our copy of the API, and extensions (none of which
// Ambit implements yet).
func notUnderstood(msg proto.Message, exts []*workload.Extension) []string {
	var out []string
	if nums := unknownFields(msg.ProtoReflect().GetUnknown()); len(nums) > 0 {
		out = append(out, fmt.Sprintf("unknown fields %v", nums))
	}
	for _, e := range exts {
		out = append(out, fmt.Sprintf("extension %q", e.GetName()))
	}
	return out
}

// unknownFields lists the field numbers in raw, the bytes of fields the
// decoder did not know.
func unknownFields(raw protoreflect.RawFields) []protowire.Number {
	var nums []protowire.Number
	for len(raw) > 0 {
		num, _, n := protowire.ConsumeField(raw)
		if n < 0 {
			// Cannot happen after a successful Unmarshal; stop rather
			// than loop.
			return append(nums, 0)
		}
		if !slices.Contains(nums, num) {
			nums = append(nums, num)
		}
		raw = raw[n:]
	}
	return nums
}

func prefixed(prefix string, in []string) []string {
	for i := range in {
		in[i] = prefix + in[i]
	}
	return in
}

// fromMatch translates one match. A condition that cannot be understood
// is left out of the match and named in its Unknown, so that evaluation
// takes it as holding nothing (ALLOW) or everything (DENY) while the
// conditions that were understood still count.
func fromMatch(m *security.Match) config.Match {
	var out config.Match
	var unknown []string
	fail := func(field string, err error) { unknown = append(unknown, field+": "+err.Error()) }
	if u := notUnderstood(m, m.GetExtensions()); len(u) > 0 {
		unknown = append(unknown, u...)
	}
	strs := []struct {
		field string
		in    []*security.StringMatch
		out   *[]config.StringMatch
	}{
		{"namespaces", m.GetNamespaces(), &out.Namespaces},
		{"not_namespaces", m.GetNotNamespaces(), &out.NotNamespaces},
		{"principals", m.GetPrincipals(), &out.Principals},
		{"not_principals", m.GetNotPrincipals(), &out.NotPrincipals},
	}
	for _, s := range strs {
		if v, err := stringMatches(s.in); err != nil {
			fail(s.field, err)
		} else {
			*s.out = v
		}
	}
	sas := []struct {
		field string
		in    []*security.ServiceAccountMatch
		out   *[]config.ServiceAccountMatch
	}{
		{"service_accounts", m.GetServiceAccounts(), &out.ServiceAccounts},
		{"not_service_accounts", m.GetNotServiceAccounts(), &out.NotServiceAccounts},
	}
	for _, s := range sas {
		if v, err := serviceAccounts(s.in); err != nil {
			fail(s.field, err)
		} else {
			*s.out = v
		}
	}
	cidrs := []struct {
		field string
		in    []*security.Address
		out   *[]netip.Prefix
	}{
		{"source_ips", m.GetSourceIps(), &out.SourceIPs},
		{"not_source_ips", m.GetNotSourceIps(), &out.NotSourceIPs},
		{"destination_ips", m.GetDestinationIps(), &out.DestinationIPs},
		{"not_destination_ips", m.GetNotDestinationIps(), &out.NotDestinationIPs},
	}
	for _, c := range cidrs {
		if v, err := prefixes(c.in); err != nil {
			fail(c.field, err)
		} else {
			*c.out = v
		}
	}
	nums := []struct {
		field string
		in    []uint32
		out   *[]uint32
	}{
		{"destination_ports", m.GetDestinationPorts(), &out.DestinationPorts},
		{"not_destination_ports", m.GetNotDestinationPorts(), &out.NotDestinationPorts},
	}
	for _, n := range nums {
		if i := slices.IndexFunc(n.in, func(p uint32) bool { return p == 0 || p > 65535 }); i >= 0 {
			fail(n.field, fmt.Errorf("port %d, want 1 to 65535", n.in[i]))
			continue
		}
		*n.out = slices.Clone(n.in)
	}
	out.Unknown = strings.Join(unknown, ", ")
	return out
}

func serviceAccounts(in []*security.ServiceAccountMatch) ([]config.ServiceAccountMatch, error) {
	var out []config.ServiceAccountMatch
	for i, sa := range in {
		if u := notUnderstood(sa, nil); len(u) > 0 {
			return nil, fmt.Errorf("match %d: %s", i, strings.Join(u, ", "))
		}
		if sa.GetNamespace() == "" || sa.GetServiceAccount() == "" {
			// Plain text has an empty identity: an empty service
			// account would match it.
			return nil, fmt.Errorf("match %d: want a namespace and a service account, got %q/%q", i, sa.GetNamespace(), sa.GetServiceAccount())
		}
		out = append(out, config.ServiceAccountMatch{Namespace: sa.GetNamespace(), ServiceAccount: sa.GetServiceAccount()})
	}
	return out, nil
}

func stringMatches(in []*security.StringMatch) ([]config.StringMatch, error) {
	var out []config.StringMatch
	for i, m := range in {
		var sm config.StringMatch
		switch t := m.GetMatchType().(type) {
		case *security.StringMatch_Exact:
			sm.Exact = t.Exact
		case *security.StringMatch_Prefix:
			sm.Prefix = t.Prefix
		case *security.StringMatch_Suffix:
			sm.Suffix = t.Suffix
		case *security.StringMatch_Presence:
			sm.Presence = true
		default:
			return nil, fmt.Errorf("match %d: none of exact, prefix, suffix, presence is set", i)
		}
		if !sm.Presence && sm.Exact == "" && sm.Prefix == "" && sm.Suffix == "" {
			// The model cannot tell "exact: empty" from "unset"; an empty
			// prefix or suffix would match everything.
			return nil, fmt.Errorf("match %d: empty string, want a non-empty one or presence", i)
		}
		out = append(out, sm)
	}
	return out, nil
}

func prefixes(in []*security.Address) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, a := range in {
		ip, err := addr(a.GetAddress())
		if err != nil {
			return nil, fmt.Errorf("address %d: %w", i, err)
		}
		if int64(a.GetLength()) > int64(ip.BitLen()) {
			return nil, fmt.Errorf("address %d: prefix length %d longer than the %d bits of %s", i, a.GetLength(), ip.BitLen(), ip)
		}
		out = append(out, netip.PrefixFrom(ip, int(a.GetLength())))
	}
	return out, nil
}

// addr is an address on the wire: 4 bytes for IPv4, 16 for IPv6.
func addr(b []byte) (netip.Addr, error) {
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return netip.Addr{}, fmt.Errorf("%d bytes, want 4 (IPv4) or 16 (IPv6)", len(b))
	}
	return a, nil
}

func ports(in []*workload.Port) ([]config.Port, error) {
	var out []config.Port
	for i, p := range in {
		if p.GetServicePort() == 0 || p.GetServicePort() > 65535 {
			return nil, fmt.Errorf("port %d: service port %d, want 1 to 65535", i, p.GetServicePort())
		}
		// Target port 0 means "the workload's own mapping" (a named
		// target port that each workload resolves).
		if p.GetTargetPort() > 65535 {
			return nil, fmt.Errorf("port %d: target port %d, want 0 to 65535", i, p.GetTargetPort())
		}
		out = append(out, config.Port{ServicePort: p.GetServicePort(), TargetPort: p.GetTargetPort()})
	}
	return out, nil
}
