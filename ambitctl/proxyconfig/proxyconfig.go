// Package proxyconfig reads a waypoint's configuration from its admin
// /config_dump (Envoy's admin.v3.ConfigDump as JSON: listeners, clusters,
// endpoints) and summarises it as tables, one row per listener filter
// chain, route, cluster or endpoint, the way istioctl proxy-config
// summarises an Envoy's. It reads the dumps of Ambit's Go waypoint and of
// an Envoy run by Istio alike, as long as every typed config in them is
// of a type registered here (the ones istiod sends waypoints).
package proxyconfig

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	_ "github.com/cncf/xds/go/udpa/type/v1"
	matcherv3 "github.com/cncf/xds/go/xds/type/matcher/v3"
	_ "github.com/cncf/xds/go/xds/type/v3"
	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/grpc_stats/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/set_filter_state/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/set_filter_state/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/matching/common_inputs/network/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/internal_upstream/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	_ "google.golang.org/protobuf/types/known/wrapperspb"
	_ "istio.io/api/envoy/extensions/stats"

	"github.com/ambitmesh/ambit/internal/anytypes"
)

// Dump is the part of a config dump the summaries read.
type Dump struct {
	Listeners []*listenerv3.Listener
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
}

// Parse reads a config dump: the active dynamic and the static
// listeners and clusters, the dynamic endpoints and the static clusters'
// inline load assignments. Other sections (bootstrap, secrets, ...) are
// skipped.
func Parse(raw []byte) (*Dump, error) {
	var cd adminv3.ConfigDump
	// Extensions of types not linked into ambitctl (Istio's proxy's, its
	// stats config) are read as empty rather than failing the dump.
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true, Resolver: anytypes.Lenient{}}).Unmarshal(raw, &cd); err != nil {
		return nil, fmt.Errorf("decode config dump: %w", err)
	}
	d := &Dump{}
	for _, a := range cd.GetConfigs() {
		m, err := a.UnmarshalNew()
		if err != nil {
			// A section of a type not linked in: not one we read.
			continue
		}
		switch s := m.(type) {
		case *adminv3.ListenersConfigDump:
			for _, l := range s.GetStaticListeners() {
				if err := add(&d.Listeners, l.GetListener()); err != nil {
					return nil, err
				}
			}
			for _, l := range s.GetDynamicListeners() {
				if err := add(&d.Listeners, l.GetActiveState().GetListener()); err != nil {
					return nil, err
				}
			}
		case *adminv3.ClustersConfigDump:
			for _, c := range s.GetStaticClusters() {
				if err := add(&d.Clusters, c.GetCluster()); err != nil {
					return nil, err
				}
			}
			for _, c := range s.GetDynamicActiveClusters() {
				if err := add(&d.Clusters, c.GetCluster()); err != nil {
					return nil, err
				}
			}
		case *adminv3.EndpointsConfigDump:
			for _, e := range s.GetStaticEndpointConfigs() {
				if err := add(&d.Endpoints, e.GetEndpointConfig()); err != nil {
					return nil, err
				}
			}
			for _, e := range s.GetDynamicEndpointConfigs() {
				if err := add(&d.Endpoints, e.GetEndpointConfig()); err != nil {
					return nil, err
				}
			}
		}
	}
	have := map[string]bool{}
	for _, e := range d.Endpoints {
		have[e.GetClusterName()] = true
	}
	for _, c := range d.Clusters {
		if la := c.GetLoadAssignment(); la != nil && !have[c.GetName()] {
			la = proto.Clone(la).(*endpointv3.ClusterLoadAssignment)
			la.ClusterName = c.GetName()
			d.Endpoints = append(d.Endpoints, la)
		}
	}
	return d, nil
}

// add unpacks a (nil: absent) into a new T and appends it.
func add[T proto.Message](to *[]T, a *anypb.Any) error {
	if a == nil {
		return nil
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		return fmt.Errorf("decode %s: %w", a.GetTypeUrl(), err)
	}
	v, ok := m.(T)
	if !ok {
		return fmt.Errorf("decode config dump: got a %s where a %T belongs", a.GetTypeUrl(), *new(T))
	}
	*to = append(*to, v)
	return nil
}

// Listener is one row of the listener summary: a filter chain of a
// listener, one of the matches that lead to it, and where it sends
// traffic.
type Listener struct {
	Listener    string `json:"listener"`
	Chain       string `json:"chain"`
	Match       string `json:"match"`
	Destination string `json:"destination"`
}

// ListenerSummary summarises the listeners, sorted as istioctl does for a
// waypoint: addressed listeners by port, then internal ones by name.
func (d *Dump) ListenerSummary() []Listener {
	ls := slices.Clone(d.Listeners)
	slices.SortStableFunc(ls, func(a, b *listenerv3.Listener) int {
		ai, bi := a.GetInternalListener() != nil, b.GetInternalListener() != nil
		if ai != bi {
			if ai {
				return 1
			}
			return -1
		}
		return cmp.Or(cmp.Compare(a.GetAddress().GetSocketAddress().GetPortValue(), b.GetAddress().GetSocketAddress().GetPortValue()),
			strings.Compare(a.GetName(), b.GetName()))
	})
	var out []Listener
	for _, l := range ls {
		name := l.GetName()
		if sa := l.GetAddress().GetSocketAddress(); sa != nil {
			name += fmt.Sprintf(" (%s:%d)", sa.GetAddress(), sa.GetPortValue())
		} else if l.GetInternalListener() != nil {
			name += " (internal)"
		}
		for _, fc := range l.GetFilterChains() {
			dest := destination(fc)
			chain := fc.GetName()
			if chain == "" {
				chain = "-"
			}
			for _, m := range chainMatches(l, fc) {
				out = append(out, Listener{Listener: name, Chain: chain, Match: m, Destination: dest})
			}
		}
		if dc := l.GetDefaultFilterChain(); dc != nil {
			out = append(out, Listener{Listener: name, Chain: cmp.Or(dc.GetName(), "default"), Match: "UNMATCHED", Destination: destination(dc)})
		}
	}
	return out
}

// chainMatches says what leads to fc: the paths through the listener's
// filter_chain_matcher that end in fc's name, or fc's filter_chain_match.
func chainMatches(l *listenerv3.Listener, fc *listenerv3.FilterChain) []string {
	m := l.GetFilterChainMatcher()
	if m == nil {
		return []string{filterChainMatch(fc.GetFilterChainMatch())}
	}
	out := matcherPaths(m, fc.GetName())
	if len(out) == 0 {
		return []string{"NONE"}
	}
	slices.Sort(out)
	return out
}

// matcherPaths lists the conditions under which m's tree ends in the
// action named chain: "input=value -> input=value ...", "ANY" for a
// match of everything else.
func matcherPaths(m *matcherv3.Matcher, chain string) []string {
	var out []string
	tree := m.GetMatcherTree()
	input := tree.GetInput().GetName()
	branch := func(cond string, om *matcherv3.Matcher_OnMatch) {
		if om == nil {
			return
		}
		if a := om.GetAction(); a != nil {
			if a.GetName() == chain {
				out = append(out, cond)
			}
			return
		}
		for _, sub := range matcherPaths(om.GetMatcher(), chain) {
			if sub == "ANY" {
				out = append(out, cond)
			} else {
				out = append(out, cond+" -> "+sub)
			}
		}
	}
	switch t := tree.GetTreeType().(type) {
	case *matcherv3.Matcher_MatcherTree_ExactMatchMap:
		for k, om := range t.ExactMatchMap.GetMap() {
			branch(input+"="+k, om)
		}
	case *matcherv3.Matcher_MatcherTree_PrefixMatchMap:
		for k, om := range t.PrefixMatchMap.GetMap() {
			branch(input+"^"+k, om)
		}
	case *matcherv3.Matcher_MatcherTree_CustomMatch:
		var ipm matcherv3.IPMatcher
		if err := t.CustomMatch.GetTypedConfig().UnmarshalTo(&ipm); err == nil {
			for _, rm := range ipm.GetRangeMatchers() {
				var cidrs []string
				for _, r := range rm.GetRanges() {
					c := r.GetAddressPrefix()
					if pl := r.GetPrefixLen().GetValue(); pl != 32 && pl != 128 {
						c += "/" + strconv.Itoa(int(pl))
					}
					cidrs = append(cidrs, c)
				}
				branch(input+"="+strings.Join(cidrs, ","), rm.GetOnMatch())
			}
		} else {
			branch(input+" ("+t.CustomMatch.GetName()+")", nil)
		}
	}
	if nm := m.GetOnNoMatch(); nm != nil {
		if a := nm.GetAction(); a != nil {
			if a.GetName() == chain {
				out = append(out, "ANY")
			}
		} else {
			out = append(out, matcherPaths(nm.GetMatcher(), chain)...)
		}
	}
	return out
}

// filterChainMatch writes the older filter_chain_match: "ALL" when it
// matches everything.
func filterChainMatch(m *listenerv3.FilterChainMatch) string {
	var parts []string
	if p := m.GetDestinationPort(); p != nil {
		parts = append(parts, fmt.Sprintf("port=%d", p.GetValue()))
	}
	for _, r := range m.GetPrefixRanges() {
		parts = append(parts, fmt.Sprintf("ip=%s/%d", r.GetAddressPrefix(), r.GetPrefixLen().GetValue()))
	}
	if len(m.GetServerNames()) > 0 {
		parts = append(parts, "sni="+strings.Join(m.GetServerNames(), ","))
	}
	if t := m.GetTransportProtocol(); t != "" {
		parts = append(parts, "transport="+t)
	}
	if len(m.GetApplicationProtocols()) > 0 {
		parts = append(parts, "alpn="+strings.Join(m.GetApplicationProtocols(), ","))
	}
	if len(parts) == 0 {
		return "ALL"
	}
	return strings.Join(parts, " ")
}

// destination says where a filter chain sends what it takes: an HTTP
// connection manager's routes, a TCP proxy's cluster(s).
func destination(fc *listenerv3.FilterChain) string {
	var names []string
	for _, f := range fc.GetFilters() {
		switch c := typed(f.GetTypedConfig()).(type) {
		case *hcmv3.HttpConnectionManager:
			if rc := c.GetRouteConfig(); rc != nil {
				return "Route: " + cmp.Or(rc.GetName(), "inline")
			}
			if r := c.GetRds(); r != nil {
				return "Route: " + r.GetRouteConfigName() + " (RDS)"
			}
			return "Route: none"
		case *tcpv3.TcpProxy:
			if cl := c.GetCluster(); cl != "" {
				return "Cluster: " + cl
			}
			var ws []string
			for _, w := range c.GetWeightedClusters().GetClusters() {
				ws = append(ws, fmt.Sprintf("%s %d", w.GetName(), w.GetWeight()))
			}
			return "Cluster: " + strings.Join(ws, ", ")
		}
		names = append(names, f.GetName())
	}
	if len(names) == 0 {
		return "-"
	}
	return strings.Join(names, ",")
}

// typed unpacks a typed config, nil when it cannot.
func typed(a *anypb.Any) proto.Message {
	if a == nil {
		return nil
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		return nil
	}
	return m
}

// Route is one row of the route summary: one route of a virtual host of
// a route configuration (inline in a listener's filter chain, as istiod
// sends waypoints).
type Route struct {
	Name        string `json:"name"`
	VirtualHost string `json:"virtualHost"`
	Domains     string `json:"domains"`
	Match       string `json:"match"`
	Route       string `json:"route"`
	Destination string `json:"destination"`
}

// RouteConfigs are the route configurations inline in the listeners,
// each once, in listener order.
func (d *Dump) RouteConfigs() []*routev3.RouteConfiguration {
	var out []*routev3.RouteConfiguration
	seen := map[string]bool{}
	for _, l := range d.Listeners {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				if hcm, ok := typed(f.GetTypedConfig()).(*hcmv3.HttpConnectionManager); ok && hcm.GetRouteConfig() != nil {
					rc := hcm.GetRouteConfig()
					key := l.GetName() + "/" + rc.GetName()
					if !seen[key] {
						seen[key] = true
						out = append(out, rc)
					}
				}
			}
		}
	}
	return out
}

// RouteSummary summarises every route, sorted by route configuration name.
func (d *Dump) RouteSummary() []Route {
	rcs := d.RouteConfigs()
	slices.SortStableFunc(rcs, func(a, b *routev3.RouteConfiguration) int { return strings.Compare(a.GetName(), b.GetName()) })
	var out []Route
	for _, rc := range rcs {
		for _, vh := range rc.GetVirtualHosts() {
			domains := strings.Join(vh.GetDomains(), ",")
			for _, r := range vh.GetRoutes() {
				out = append(out, Route{Name: rc.GetName(), VirtualHost: vh.GetName(), Domains: domains,
					Match: routeMatch(r.GetMatch()), Route: cmp.Or(r.GetName(), "-"), Destination: routeAction(r)})
			}
		}
	}
	return out
}

// routeMatch writes a route's match: path, then headers and query
// parameters.
func routeMatch(m *routev3.RouteMatch) string {
	var parts []string
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		parts = append(parts, p.Prefix+"*")
	case *routev3.RouteMatch_Path:
		parts = append(parts, p.Path)
	case *routev3.RouteMatch_SafeRegex:
		parts = append(parts, "regex "+p.SafeRegex.GetRegex())
	case *routev3.RouteMatch_PathSeparatedPrefix:
		parts = append(parts, p.PathSeparatedPrefix+"/*")
	case *routev3.RouteMatch_ConnectMatcher_:
		parts = append(parts, "CONNECT")
	}
	for _, h := range m.GetHeaders() {
		parts = append(parts, headerMatch(h))
	}
	for _, q := range m.GetQueryParameters() {
		sm := q.GetStringMatch()
		switch {
		case sm.GetExact() != "":
			parts = append(parts, "?"+q.GetName()+"="+sm.GetExact())
		case sm.GetSafeRegex() != nil:
			parts = append(parts, "?"+q.GetName()+"~"+sm.GetSafeRegex().GetRegex())
		default:
			parts = append(parts, "?"+q.GetName())
		}
	}
	if len(parts) == 0 {
		return "*"
	}
	return strings.Join(parts, " ")
}

func headerMatch(h *routev3.HeaderMatcher) string {
	n := h.GetName()
	if h.GetInvertMatch() {
		n = "!" + n
	}
	sm := h.GetStringMatch()
	switch {
	case sm.GetExact() != "":
		return n + "=" + sm.GetExact()
	case sm.GetPrefix() != "":
		return n + "^" + sm.GetPrefix()
	case sm.GetSafeRegex() != nil:
		return n + "~" + sm.GetSafeRegex().GetRegex()
	case h.GetPresentMatch():
		return n
	}
	return n + "=*"
}

// routeAction writes what a route does: its cluster or weighted
// clusters, a redirect or a direct response.
func routeAction(r *routev3.Route) string {
	switch a := r.GetAction().(type) {
	case *routev3.Route_Route:
		ra := a.Route
		if c := ra.GetCluster(); c != "" {
			return c
		}
		if wc := ra.GetWeightedClusters(); wc != nil {
			var total uint32
			for _, c := range wc.GetClusters() {
				total += c.GetWeight().GetValue()
			}
			var parts []string
			for _, c := range wc.GetClusters() {
				w := c.GetWeight().GetValue()
				if total > 0 {
					parts = append(parts, fmt.Sprintf("%s %d%%", c.GetName(), w*100/total))
				} else {
					parts = append(parts, c.GetName()+" 0")
				}
			}
			return strings.Join(parts, ", ")
		}
		if h := ra.GetClusterHeader(); h != "" {
			return "cluster from header " + h
		}
		return "-"
	case *routev3.Route_Redirect:
		return "redirect"
	case *routev3.Route_DirectResponse:
		return fmt.Sprintf("direct response %d", a.DirectResponse.GetStatus())
	case *routev3.Route_NonForwardingAction:
		return "non-forwarding"
	}
	return "-"
}

// Cluster is one row of the cluster summary. Istio names clusters
// direction|port|subset|host (inbound-vip|9080|http|reviews.shop...);
// other names leave the parts empty.
type Cluster struct {
	Name        string `json:"name"`
	ServiceFQDN string `json:"serviceFQDN"`
	Port        string `json:"port"`
	Subset      string `json:"subset"`
	Direction   string `json:"direction"`
	Type        string `json:"type"`
}

// ClusterSummary summarises the clusters, by name.
func (d *Dump) ClusterSummary() []Cluster {
	var out []Cluster
	for _, c := range d.Clusters {
		row := Cluster{Name: c.GetName(), Type: clusterType(c)}
		if parts := strings.Split(c.GetName(), "|"); len(parts) == 4 {
			row.Direction, row.Port, row.Subset, row.ServiceFQDN = parts[0], parts[1], parts[2], parts[3]
		}
		out = append(out, row)
	}
	slices.SortFunc(out, func(a, b Cluster) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func clusterType(c *clusterv3.Cluster) string {
	if ct := c.GetClusterType(); ct != nil {
		return ct.GetName()
	}
	return c.GetType().String()
}

// Endpoint is one row of the endpoint summary: an endpoint of a
// cluster's load assignment, its health status and weight.
type Endpoint struct {
	Endpoint string `json:"endpoint"`
	Status   string `json:"status"`
	Weight   uint32 `json:"weight"`
	Cluster  string `json:"cluster"`
}

// EndpointSummary summarises the endpoints, by cluster then address.
func (d *Dump) EndpointSummary() []Endpoint {
	var out []Endpoint
	for _, la := range d.Endpoints {
		for _, le := range la.GetEndpoints() {
			for _, e := range le.GetLbEndpoints() {
				w := uint32(1)
				if v := e.GetLoadBalancingWeight(); v != nil {
					w = v.GetValue()
				}
				out = append(out, Endpoint{Endpoint: address(e.GetEndpoint().GetAddress()), Status: e.GetHealthStatus().String(),
					Weight: w, Cluster: la.GetClusterName()})
			}
		}
	}
	slices.SortFunc(out, func(a, b Endpoint) int {
		return cmp.Or(strings.Compare(a.Cluster, b.Cluster), strings.Compare(a.Endpoint, b.Endpoint))
	})
	return out
}

// address writes an endpoint's address: ip:port, or for an internal
// listener the endpoint id (the pod's address istiod puts there) and the
// listener.
func address(a *corev3.Address) string {
	switch {
	case a.GetSocketAddress() != nil:
		sa := a.GetSocketAddress()
		return fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue())
	case a.GetEnvoyInternalAddress() != nil:
		ia := a.GetEnvoyInternalAddress()
		if id := ia.GetEndpointId(); id != "" {
			return id + " via " + ia.GetServerListenerName()
		}
		return "envoy://" + ia.GetServerListenerName()
	case a.GetPipe() != nil:
		return "unix:" + a.GetPipe().GetPath()
	}
	return "-"
}
