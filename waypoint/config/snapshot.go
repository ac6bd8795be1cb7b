// Package config is the waypoint's model of its Envoy configuration: the
// Listener, Cluster and ClusterLoadAssignment resources istiod serves
// (or a static bootstrap file holds), translated and validated as a
// whole into an immutable Snapshot that the data path reads. Build
// refuses a set that uses a filter, field or operator the waypoint does
// not implement, naming the resource, so that the update is NACKed and
// the last good snapshot kept; an RBAC rule it cannot compile is the one
// exception: its filter denies everything (fail closed) rather than
// leaving older, more permissive rules in force.
package config

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	xdscore "github.com/cncf/xds/go/xds/core/v3"
	cncfmatcher "github.com/cncf/xds/go/xds/type/matcher/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Snapshot is one whole, validated configuration. It is never changed
// after Build; a new configuration is a new Snapshot.
type Snapshot struct {
	Listeners map[string]*Listener
	Clusters  map[string]*Cluster
	// Raw resources, as received, for the config dump.
	RawListeners []*listener.Listener
	RawClusters  []*cluster.Cluster
	RawEndpoints []*endpoint.ClusterLoadAssignment
	// Warnings are things that apply but deserve a log line (an RBAC
	// filter failing closed).
	Warnings []string
}

// Listener is a translated listener: a socket listener (Port) or an
// internal one.
type Listener struct {
	Name     string
	Internal bool
	Address  netip.AddrPort
	// OriginalDst: the original_dst listener filter restores the local
	// address (from passthrough metadata or filter state).
	OriginalDst bool
	// HTTPInspector: the http_inspector detects the application
	// protocol, except on InspectorDisabledPorts.
	HTTPInspector          bool
	InspectorDisabledPorts []uint16
	// FiltersTimeout bounds the listener filters' wait for the client's
	// first bytes (listener_filters_timeout, 15 s when unset, 0 none);
	// on expiry the connection goes on without the sniffed protocol if
	// ContinueOnTimeout, else it is closed.
	FiltersTimeout    time.Duration
	ContinueOnTimeout bool
	Chains            []*Chain
	// Matcher is the filter_chain_matcher tree; without it, the chains'
	// filter_chain_match pick (only empty matches are supported) and
	// Default.
	Matcher *MatchNode
	Default *Chain
}

// Chain is one filter chain: network filters, then a terminal HTTP
// connection manager or tcp_proxy.
type Chain struct {
	Name string
	// SetFilterState are the network set_filter_state values set on a
	// new connection.
	SetFilterState []*FilterStateValue
	// RBAC are network RBAC filters, in order.
	RBAC []*RBAC
	HCM  *HCM
	TCP  *TCPProxy
	// TLS: the chain terminates TLS (connect_terminate), requiring a
	// client certificate.
	TLS bool
}

// MetadataKey names one string field of dynamic metadata.
type MetadataKey struct{ Namespace, Key string }

// FilterStateValue is one value a set_filter_state filter sets.
type FilterStateValue struct {
	Key         string
	Value       *Format
	Shared      bool
	ReadOnly    bool
	SkipIfEmpty bool
}

// Input is a matcher input.
type Input int

const (
	InputDestinationIP Input = iota
	InputDestinationPort
	InputSourceIP
	InputApplicationProtocol
	InputFilterState
	InputServerName
	InputTransportProtocol
)

// MatchNode is one node of an xds.type.matcher.v3 tree: either an action
// (a chain name) or a tree reading an input.
type MatchNode struct {
	Action  string // chain name; "" for a tree
	Input   Input
	Key     string // filter-state key for InputFilterState
	Exact   map[string]*MatchNode
	Prefix  map[string]*MatchNode
	IP      []IPRange // longest prefix first
	NoMatch *MatchNode
}

// IPRange is one range matcher of an IP matcher.
type IPRange struct {
	Prefix    netip.Prefix
	OnMatch   *MatchNode
	Exclusive bool
}

// Inputs provides match inputs; lazily, so that the application protocol
// is sniffed only when the tree asks for it.
type Inputs interface {
	Input(in Input, key string) (string, bool)
}

// Match walks the tree: the chain name, or "" when nothing matched.
func (n *MatchNode) Match(in Inputs) string {
	if n == nil {
		return ""
	}
	if n.Action != "" {
		return n.Action
	}
	v, ok := in.Input(n.Input, n.Key)
	if ok {
		switch {
		case n.IP != nil:
			if a, err := netip.ParseAddr(v); err == nil {
				for _, r := range n.IP {
					if r.Prefix.Contains(a) {
						if name := r.OnMatch.Match(in); name != "" {
							return name
						}
						if r.Exclusive {
							break
						}
					}
				}
			}
		case n.Exact != nil:
			if next, ok := n.Exact[v]; ok {
				if name := next.Match(in); name != "" {
					return name
				}
			}
		case n.Prefix != nil:
			// Longest prefix first.
			keys := make([]string, 0, len(n.Prefix))
			for k := range n.Prefix {
				if strings.HasPrefix(v, k) {
					keys = append(keys, k)
				}
			}
			sort.Slice(keys, func(i, j int) bool { return len(keys[i]) > len(keys[j]) })
			for _, k := range keys {
				if name := n.Prefix[k].Match(in); name != "" {
					return name
				}
			}
		}
	}
	return n.NoMatch.Match(in)
}

// HCM is an HTTP connection manager.
type HCM struct {
	StatPrefix string
	Filters    []*HTTPFilter
	// VirtualHosts of the inline route configuration.
	VirtualHosts []*VirtualHost
	// Upgrades are the upgrade types the HCM allows (lower case:
	// "websocket", "connect").
	Upgrades map[string]bool
	// Codec is the codec_type: AUTO serves HTTP/2 to a client that opens
	// with its preface (h2c prior knowledge), HTTP/1 otherwise.
	Codec Codec
	// StreamIdleTimeout, RequestHeadersTimeout, IdleTimeout: 0 is none.
	StreamIdleTimeout     time.Duration
	RequestHeadersTimeout time.Duration
	IdleTimeout           time.Duration
	MaxRequestHeadersKB   int
	MaxHeadersCount       int
	ServerName            string
	// Path handling before routing and RBAC: normalize_path (RFC 3986
	// dot segments, unreserved percent-encodings decoded), merge_slashes,
	// and path_with_escaped_slashes_action (RejectEscapedSlashes,
	// UnescapeSlashes).
	// AcceptHTTP10: HTTP/1.0 requests are served (else 426, Envoy's
	// default).
	AcceptHTTP10 bool
	// Proxy100Continue: Expect: 100-continue goes upstream (else the
	// waypoint answers 100 Continue itself and drops the header).
	Proxy100Continue bool
	// EnableTrailers: http_protocol_options.enable_trailers, trailers
	// read from and written to HTTP/1.1 clients (Envoy's HTTP/1 codec
	// drops them otherwise; HTTP/2 clients always have them).
	EnableTrailers bool
	// AllowConnect: http2_protocol_options.allow_connect, an HTTP/2
	// client's extended CONNECT (RFC 8441, WebSocket over HTTP/2) is
	// an upgrade (else refused, as Envoy's codec refuses it).
	AllowConnect         bool
	NormalizePath        bool
	MergeSlashes         bool
	RejectEscapedSlashes bool
	UnescapeSlashes      bool
	// Tracing is nil when the HCM traces nothing.
	Tracing *Tracing
	// OTelLogs are the HCM's OpenTelemetry access loggers (otel_accesslog.go).
	OTelLogs []*OTelAccessLog
	// AccessLogs are the HCM's file access logs (accesslog.go); Stats the
	// istio.stats filter's config (nil: Istio's defaults).
	AccessLogs []*AccessLog
	Stats      *Stats
}

// Codec is an HTTP connection manager's codec_type.
type Codec int

const (
	CodecAuto Codec = iota
	CodecHTTP1
	CodecHTTP2
)

// HTTPFilterKind is what an HTTP filter does.
type HTTPFilterKind int

const (
	FilterSetFilterState HTTPFilterKind = iota
	FilterRBAC
	FilterFault
	FilterCORS
	// FilterTelemetry are peer metadata, istio.stats and grpc_stats:
	// they observe and change nothing on the request path.
	FilterTelemetry
	FilterRouter
)

// HTTPFilter is one HTTP filter.
type HTTPFilter struct {
	Name           string
	Kind           HTTPFilterKind
	SetFilterState []*FilterStateValue
	RBAC           *RBAC
	Fault          *Fault
}

// VirtualHost is a virtual host with its routes.
type VirtualHost struct {
	Name    string
	Domains []string
	Routes  []*Route
	Headers HeaderMutation
}

// HeaderMutation adds and removes headers.
type HeaderMutation struct {
	RequestAdd     []HeaderValue
	RequestRemove  []string
	ResponseAdd    []HeaderValue
	ResponseRemove []string
}

// HeaderValue is one header to add: Append adds a value, otherwise it
// replaces the header.
type HeaderValue struct {
	Name        string
	Value       string
	Append      bool
	AddIfAbsent bool
}

// Route is one route.
type Route struct {
	Name  string
	Match *RouteMatch
	// One of Action, Redirect, Direct.
	Action   *RouteAction
	Redirect *Redirect
	Direct   *DirectResponse
	Headers  HeaderMutation
	// Per-route filter configuration.
	Fault *Fault
	CORS  *CORS
	// DisabledFilters are filters disabled on this route.
	DisabledFilters map[string]bool
	// Operation is the route's decorator operation: the span's name.
	Operation string
}

// RouteAction forwards to a cluster.
type RouteAction struct {
	Cluster  string
	Weighted []WeightedCluster
	// ClusterNotFoundCode is the status when the cluster is missing.
	ClusterNotFoundCode int
	Timeout             time.Duration
	IdleTimeout         time.Duration
	// MaxGRPCTimeout, when set (istiod sets it to the route timeout), makes
	// a gRPC request's grpc-timeout header its timeout, capped by it
	// unless 0.
	MaxGRPCTimeout *time.Duration
	PrefixRewrite  string
	RegexRewrite   *RegexRewrite
	HostRewrite    string
	Upgrades       map[string]bool
	// Connect: the CONNECT request is terminated and its payload sent to
	// the cluster (connect_config).
	Connect bool
	// Retry is the route's (else its virtual host's) retry policy.
	Retry *RetryPolicy
	// Mirrors are request_mirror_policies: a copy of the request goes
	// to each cluster, its answer discarded.
	Mirrors []Mirror
	// BufferLimit is the most of a request body kept for retries and
	// mirrors (the route's, else the virtual host's
	// per_request_buffer_limit_bytes, else Envoy's 1 MiB connection
	// buffer); a longer body is streamed and not retried.
	BufferLimit int
}

// Mirror is one request mirror policy.
type Mirror struct {
	Cluster string
	// Fraction of requests mirrored, in [0, 1].
	Fraction float64
	// HostSuffix: "-shadow" is appended to the mirrored request's host,
	// as Envoy does unless disable_shadow_host_suffix_append.
	HostSuffix bool
}

// RetryPolicy is the part of Envoy's retry policy the waypoint acts on.
type RetryPolicy struct {
	NumRetries int
	// On holds the retry_on conditions: connect-failure, reset,
	// refused-stream, 5xx, gateway-error, retriable-4xx,
	// retriable-status-codes, and gRPC's cancelled, deadline-exceeded,
	// internal, resource-exhausted, unavailable (a trailers-only
	// answer's grpc-status).
	On            map[string]bool
	StatusCodes   []int
	PerTryTimeout time.Duration
	// OtherHosts: the previous_hosts predicate, a retry goes to an
	// endpoint not tried yet when there is one.
	OtherHosts              bool
	BaseBackoff, MaxBackoff time.Duration
}

// WeightedCluster is one weighted cluster.
type WeightedCluster struct {
	Name        string
	Weight      uint32
	Headers     HeaderMutation
	HostRewrite string
}

// RegexRewrite substitutes a regex in the path.
type RegexRewrite struct {
	Pattern      *regexpT
	Substitution string
}

// Redirect answers with a redirect.
type Redirect struct {
	Scheme, Host, Path, PrefixRewrite string
	Port                              uint32
	StripQuery                        bool
	Code                              int
	RegexRewrite                      *RegexRewrite
}

// DirectResponse answers directly.
type DirectResponse struct {
	Status int
	Body   string
}

// Fault is an HTTP fault filter's configuration.
type Fault struct {
	Delay        time.Duration
	DelayPercent float64
	AbortStatus  int
	AbortPercent float64
	// AbortHeader: the status comes from the request's
	// x-envoy-fault-abort-request header.
	AbortHeader bool
	Headers     []HeaderMatch
}

// CORS is a route's CORS policy.
type CORS struct {
	AllowOrigins     []StringMatch
	AllowMethods     string
	AllowHeaders     string
	ExposeHeaders    string
	MaxAge           string
	AllowCredentials bool
}

// TCPProxy is a tcp_proxy.
type TCPProxy struct {
	StatPrefix string
	Cluster    string
	Weighted   []WeightedCluster
	// Tunnel: the connection is carried as a CONNECT to Hostname's
	// rendering (tunneling_config).
	Tunnel        *Format
	TunnelHeaders []HeaderValue
	IdleTimeout   time.Duration
	// AccessLogs are the tcp_proxy's access logs.
	AccessLogs []*AccessLog
}

// ClusterType is how a cluster finds its endpoints.
type ClusterType int

const (
	ClusterStatic ClusterType = iota
	ClusterEDS
	ClusterOriginalDst
)

// Cluster is a translated cluster.
type Cluster struct {
	Name           string
	Type           ClusterType
	ConnectTimeout time.Duration
	// Endpoints are the cluster's (static or from EDS), usable ones only.
	Endpoints []*Endpoint
	// PortOverride replaces the port of an ORIGINAL_DST destination.
	PortOverride uint16
	// DstMetadata, when set, names the dynamic metadata field that, when
	// present, is an ORIGINAL_DST cluster's destination instead of the
	// connection's local address (original_dst_lb_config.metadata_key).
	DstMetadata *MetadataKey
	// Internal: endpoints are internal listeners, reached through the
	// internal_upstream transport passing PassthroughHost metadata
	// namespaces of the endpoint.
	Internal        bool
	PassthroughHost []string
	// TLS: upstream TLS (HBONE), with the peer's URI SAN checked by
	// SANMatch when set.
	TLS      bool
	SANMatch []StringMatch
	// Protocol is the HTTP version spoken to the endpoints.
	Protocol UpstreamProtocol
	// EnableTrailers: the HTTP/1 protocol options' enable_trailers,
	// trailers written to and read from HTTP/1.1 endpoints (else
	// dropped, as Envoy's HTTP/1 codec does).
	EnableTrailers bool
	// LeastRequest: Envoy's least-request balancer (the fewer active
	// requests of ChoiceCount random endpoints), else round robin.
	LeastRequest    bool
	ChoiceCount     int
	CircuitBreakers CircuitBreakers
	// Pool: the upstream connections' limits (resilience.go).
	Pool ConnPool
	// Outlier, when set, ejects failing endpoints.
	Outlier *OutlierDetection
	// Prioritized: some endpoint has a priority below 0's (Istio's
	// locality failover).
	Prioritized bool
	// PanicThreshold is common_lb_config.healthy_panic_threshold, a
	// percentage (Envoy's 50 when unset; 0 disables panic mode).
	PanicThreshold float64
	rr             atomic.Uint64
}

// Pick returns the next endpoint round robin, or nil when none is
// usable.
func (c *Cluster) Pick() *Endpoint {
	if len(c.Endpoints) == 0 {
		return nil
	}
	i := c.rr.Add(1) - 1
	return c.Endpoints[i%uint64(len(c.Endpoints))]
}

// Endpoint is one usable endpoint.
type Endpoint struct {
	// Address for a socket endpoint; Listener and ID for an internal
	// one.
	Address  netip.AddrPort
	Listener string
	ID       string
	// Metadata is the endpoint's filter_metadata, string fields only.
	Metadata map[string]map[string]string
	// Priority is its locality's priority (0 the highest): traffic goes
	// to the highest priority with a healthy endpoint.
	Priority uint32
	// name is String's, made once when the endpoint is built (the
	// balancer keys its hosts by it on every request).
	name string
}

// String names the endpoint for logs and pool keys.
func (e *Endpoint) String() string {
	if e.name != "" {
		return e.name
	}
	return e.makeName()
}

func (e *Endpoint) makeName() string {
	if e.Listener != "" {
		return "envoy://" + e.Listener + "/" + e.ID
	}
	return e.Address.String()
}

// Errors.
var (
	// ErrUnsupported marks a filter, field or type the waypoint does not
	// implement.
	ErrUnsupported = errors.New("not supported")
)

// Build translates and validates a whole set of resources.
func Build(listeners []*listener.Listener, clusters []*cluster.Cluster, endpoints []*endpoint.ClusterLoadAssignment) (*Snapshot, error) {
	s := &Snapshot{
		Listeners: map[string]*Listener{}, Clusters: map[string]*Cluster{},
		RawListeners: listeners, RawClusters: clusters, RawEndpoints: endpoints,
	}
	cla := map[string]*endpoint.ClusterLoadAssignment{}
	for _, e := range endpoints {
		if err := e.ValidateAll(); err != nil {
			return nil, fmt.Errorf("endpoints %s: %w", e.GetClusterName(), err)
		}
		cla[e.GetClusterName()] = e
	}
	for _, c := range clusters {
		tc, err := buildCluster(c, cla)
		if err != nil && leaveOut(c.GetName(), err) {
			s.Warnings = append(s.Warnings, fmt.Sprintf("cluster %s left out: %v", c.GetName(), err))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.GetName(), err)
		}
		if _, dup := s.Clusters[tc.Name]; dup {
			return nil, fmt.Errorf("cluster %s: defined twice", tc.Name)
		}
		s.Clusters[tc.Name] = tc
	}
	for _, l := range listeners {
		tl, warns, err := buildListener(l)
		if err != nil && leaveOut(l.GetName(), err) {
			s.Warnings = append(s.Warnings, fmt.Sprintf("listener %s left out: %v", l.GetName(), err))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", l.GetName(), err)
		}
		if _, dup := s.Listeners[tl.Name]; dup {
			return nil, fmt.Errorf("listener %s: defined twice", tl.Name)
		}
		s.Listeners[tl.Name] = tl
		s.Warnings = append(s.Warnings, warns...)
	}
	// Every internal endpoint names a listener that exists and is
	// internal.
	for _, c := range s.Clusters {
		for _, e := range c.Endpoints {
			if e.Listener == "" {
				continue
			}
			if l, ok := s.Listeners[e.Listener]; ok && !l.Internal {
				return nil, fmt.Errorf("cluster %s: endpoint %s: listener %s is not internal", c.Name, e, e.Listener)
			}
		}
	}
	return s, nil
}

// Chain returns the chain of listener l named name.
func (l *Listener) Chain(name string) *Chain {
	for _, c := range l.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// multiNetwork are the resources Istio's istiod (1.29 and later) gives
// every waypoint for double HBONE, the inner tunnel of a connection to
// another network's east-west gateway: an internal listener and the
// cluster to it, which wrap TLS in an internal upstream. The waypoint
// does not carry traffic across networks, so when it cannot build them
// it leaves them out with a warning instead of refusing the whole
// configuration; traffic routed to them finds no such listener or
// cluster and is answered 503, never sent another way.
var multiNetwork = map[string]bool{"inner_connect_originate": true}

// leaveOut reports whether resource name, which failed to build with
// err, is left out rather than refused.
func leaveOut(name string, err error) bool {
	return multiNetwork[name] && errors.Is(err, ErrUnsupported)
}

func unsupported(what string) error { return fmt.Errorf("%s: %w", what, ErrUnsupported) }

func buildListener(l *listener.Listener) (*Listener, []string, error) {
	if err := l.ValidateAll(); err != nil {
		return nil, nil, err
	}
	out := &Listener{Name: l.GetName()}
	switch {
	case l.GetInternalListener() != nil:
		out.Internal = true
	case l.GetAddress().GetSocketAddress() != nil:
		sa := l.GetAddress().GetSocketAddress()
		a, err := netip.ParseAddr(sa.GetAddress())
		if err != nil {
			return nil, nil, fmt.Errorf("address %q: %w", sa.GetAddress(), err)
		}
		out.Address = netip.AddrPortFrom(a, uint16(sa.GetPortValue()))
	default:
		return nil, nil, unsupported("listener without socket address or internal_listener")
	}
	out.FiltersTimeout = 15 * time.Second
	if l.GetListenerFiltersTimeout() != nil {
		out.FiltersTimeout = l.GetListenerFiltersTimeout().AsDuration()
	}
	out.ContinueOnTimeout = l.GetContinueOnListenerFiltersTimeout()
	if l.GetUseOriginalDst().GetValue() {
		return nil, nil, unsupported("use_original_dst")
	}
	for _, lf := range l.GetListenerFilters() {
		tu := typeURL(lf.GetTypedConfig())
		switch {
		case strings.HasSuffix(tu, "envoy.extensions.filters.listener.original_dst.v3.OriginalDst"):
			out.OriginalDst = true
		case strings.HasSuffix(tu, "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"):
			out.HTTPInspector = true
			ports, err := disabledPorts(lf.GetFilterDisabled())
			if err != nil {
				return nil, nil, fmt.Errorf("listener filter %s: %w", lf.GetName(), err)
			}
			out.InspectorDisabledPorts = ports
		case strings.HasSuffix(tu, "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"):
			// Only TLS passthrough would read it; no chain here
			// matches on transport protocol or SNI.
		default:
			return nil, nil, unsupported(fmt.Sprintf("listener filter %s (%s)", lf.GetName(), tu))
		}
	}
	var warns []string
	for i, fc := range l.GetFilterChains() {
		name := fc.GetName()
		if name == "" {
			name = strconv.Itoa(i)
		}
		c, w, err := buildChain(fc, name)
		if err != nil {
			return nil, nil, fmt.Errorf("filter chain %s: %w", name, err)
		}
		for _, x := range w {
			warns = append(warns, fmt.Sprintf("listener %s: filter chain %s: %s", out.Name, name, x))
		}
		if fc.GetFilterChainMatch() != nil && !proto.Equal(fc.GetFilterChainMatch(), &listener.FilterChainMatch{}) && l.GetFilterChainMatcher() == nil {
			return nil, nil, unsupported(fmt.Sprintf("filter chain %s: filter_chain_match (the waypoint reads filter_chain_matcher)", name))
		}
		out.Chains = append(out.Chains, c)
	}
	if dc := l.GetDefaultFilterChain(); dc != nil {
		c, w, err := buildChain(dc, cmpOr(dc.GetName(), "default"))
		if err != nil {
			return nil, nil, fmt.Errorf("default filter chain: %w", err)
		}
		warns = append(warns, w...)
		out.Default = c
	}
	if m := l.GetFilterChainMatcher(); m != nil {
		n, err := buildMatcher(m)
		if err != nil {
			return nil, nil, fmt.Errorf("filter_chain_matcher: %w", err)
		}
		if err := checkActions(n, out); err != nil {
			return nil, nil, fmt.Errorf("filter_chain_matcher: %w", err)
		}
		out.Matcher = n
	} else if len(out.Chains) > 1 {
		return nil, nil, unsupported("several filter chains without filter_chain_matcher")
	}
	if !out.Internal && out.Address.Port() == 0 {
		return nil, nil, fmt.Errorf("listener without port")
	}
	return out, warns, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func checkActions(n *MatchNode, l *Listener) error {
	if n == nil {
		return nil
	}
	if n.Action != "" {
		if l.Chain(n.Action) == nil {
			return fmt.Errorf("action names filter chain %q, which the listener lacks", n.Action)
		}
		return nil
	}
	for _, m := range []map[string]*MatchNode{n.Exact, n.Prefix} {
		for _, c := range m {
			if err := checkActions(c, l); err != nil {
				return err
			}
		}
	}
	for _, r := range n.IP {
		if err := checkActions(r.OnMatch, l); err != nil {
			return err
		}
	}
	return checkActions(n.NoMatch, l)
}

// disabledPorts reads the ListenerFilterChainMatchPredicate Istio uses
// to skip the inspector on ports: destination_port_range, or an or_match
// of them.
func disabledPorts(p *listener.ListenerFilterChainMatchPredicate) ([]uint16, error) {
	if p == nil {
		return nil, nil
	}
	switch r := p.GetRule().(type) {
	case *listener.ListenerFilterChainMatchPredicate_DestinationPortRange:
		var out []uint16
		for port := r.DestinationPortRange.GetStart(); port < r.DestinationPortRange.GetEnd() && port < 65536; port++ {
			out = append(out, uint16(port))
		}
		return out, nil
	case *listener.ListenerFilterChainMatchPredicate_OrMatch:
		var out []uint16
		for _, q := range r.OrMatch.GetRules() {
			ps, err := disabledPorts(q)
			if err != nil {
				return nil, err
			}
			out = append(out, ps...)
		}
		return out, nil
	default:
		return nil, unsupported(fmt.Sprintf("filter_disabled %T", r))
	}
}

func buildMatcher(m *cncfmatcher.Matcher) (*MatchNode, error) {
	if m.GetMatcherList() != nil {
		return nil, unsupported("matcher_list")
	}
	t := m.GetMatcherTree()
	if t == nil {
		return nil, fmt.Errorf("matcher without tree")
	}
	n := &MatchNode{}
	var err error
	n.Input, n.Key, err = matchInput(t.GetInput())
	if err != nil {
		return nil, err
	}
	onMatch := func(om *cncfmatcher.Matcher_OnMatch) (*MatchNode, error) {
		if om == nil {
			return nil, nil
		}
		if a := om.GetAction(); a != nil {
			name, err := chainAction(a)
			return &MatchNode{Action: name}, err
		}
		if om.GetMatcher() != nil {
			return buildMatcher(om.GetMatcher())
		}
		return nil, fmt.Errorf("on_match without action or matcher")
	}
	mapOf := func(mm *cncfmatcher.Matcher_MatcherTree_MatchMap) (map[string]*MatchNode, error) {
		out := map[string]*MatchNode{}
		for k, v := range mm.GetMap() {
			c, err := onMatch(v)
			if err != nil {
				return nil, fmt.Errorf("key %q: %w", k, err)
			}
			out[k] = c
		}
		return out, nil
	}
	switch tt := t.GetTreeType().(type) {
	case *cncfmatcher.Matcher_MatcherTree_ExactMatchMap:
		if n.Exact, err = mapOf(tt.ExactMatchMap); err != nil {
			return nil, err
		}
	case *cncfmatcher.Matcher_MatcherTree_PrefixMatchMap:
		if n.Prefix, err = mapOf(tt.PrefixMatchMap); err != nil {
			return nil, err
		}
	case *cncfmatcher.Matcher_MatcherTree_CustomMatch:
		var ipm cncfmatcher.IPMatcher
		if err := anyTo(tt.CustomMatch.GetTypedConfig(), &ipm); err != nil {
			return nil, fmt.Errorf("custom_match %s: %w", tt.CustomMatch.GetName(), err)
		}
		n.IP = []IPRange{}
		for _, rm := range ipm.GetRangeMatchers() {
			c, err := onMatch(rm.GetOnMatch())
			if err != nil {
				return nil, err
			}
			for _, r := range rm.GetRanges() {
				a, err := netip.ParseAddr(r.GetAddressPrefix())
				if err != nil {
					return nil, fmt.Errorf("ip range %q: %w", r.GetAddressPrefix(), err)
				}
				bits := a.BitLen()
				if r.GetPrefixLen() != nil {
					bits = int(r.GetPrefixLen().GetValue())
				}
				p, err := a.Prefix(bits)
				if err != nil {
					return nil, fmt.Errorf("ip range %s/%d: %w", a, bits, err)
				}
				n.IP = append(n.IP, IPRange{Prefix: p, OnMatch: c, Exclusive: rm.GetExclusive()})
			}
		}
		sort.SliceStable(n.IP, func(i, j int) bool { return n.IP[i].Prefix.Bits() > n.IP[j].Prefix.Bits() })
	default:
		return nil, unsupported(fmt.Sprintf("matcher tree %T", tt))
	}
	if n.NoMatch, err = onMatch(m.GetOnNoMatch()); err != nil {
		return nil, fmt.Errorf("on_no_match: %w", err)
	}
	return n, nil
}

func matchInput(in *xdscore.TypedExtensionConfig) (Input, string, error) {
	tu := typeURL(in.GetTypedConfig())
	switch {
	case strings.HasSuffix(tu, ".DestinationIPInput"):
		return InputDestinationIP, "", nil
	case strings.HasSuffix(tu, ".DestinationPortInput"):
		return InputDestinationPort, "", nil
	case strings.HasSuffix(tu, ".SourceIPInput"):
		return InputSourceIP, "", nil
	case strings.HasSuffix(tu, ".ApplicationProtocolInput"):
		return InputApplicationProtocol, "", nil
	case strings.HasSuffix(tu, ".ServerNameInput"):
		return InputServerName, "", nil
	case strings.HasSuffix(tu, ".TransportProtocolInput"):
		return InputTransportProtocol, "", nil
	case strings.HasSuffix(tu, ".FilterStateInput"):
		var fs filterStateInput
		if err := anyTo(in.GetTypedConfig(), &fs); err != nil {
			return 0, "", err
		}
		return InputFilterState, fs.GetKey(), nil
	default:
		return 0, "", unsupported(fmt.Sprintf("matcher input %s (%s)", in.GetName(), tu))
	}
}

func chainAction(a *xdscore.TypedExtensionConfig) (string, error) {
	var sv stringValue
	if err := anyTo(a.GetTypedConfig(), &sv); err != nil {
		return "", fmt.Errorf("action %s: %w", a.GetName(), err)
	}
	if sv.GetValue() == "" {
		return "", fmt.Errorf("action %s: empty chain name", a.GetName())
	}
	return sv.GetValue(), nil
}

func typeURL(a *anypb.Any) string { return a.GetTypeUrl() }

func anyTo(a *anypb.Any, m proto.Message) error {
	if a == nil {
		return fmt.Errorf("no typed_config")
	}
	if err := a.UnmarshalTo(m); err != nil {
		return fmt.Errorf("typed_config %s: %w", a.GetTypeUrl(), err)
	}
	return nil
}

func dur(d *durationpb.Duration) time.Duration {
	if d == nil {
		return 0
	}
	return d.AsDuration()
}

func headerValues(hs []*core.HeaderValueOption) ([]HeaderValue, error) {
	var out []HeaderValue
	for _, h := range hs {
		hv := HeaderValue{Name: h.GetHeader().GetKey(), Value: h.GetHeader().GetValue()}
		if strings.Contains(hv.Value, "%") {
			return nil, unsupported(fmt.Sprintf("header %s: format operators in values", hv.Name))
		}
		switch h.GetAppendAction() {
		case core.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			hv.Append = true
		case core.HeaderValueOption_ADD_IF_ABSENT:
			hv.AddIfAbsent = true
		}
		if h.GetAppend() != nil { // deprecated append overrides
			hv.Append = h.GetAppend().GetValue()
		}
		out = append(out, hv)
	}
	return out, nil
}

var _ = route.Route{}

//lint:file-ignore SA1019 Envoy still honours its deprecated fields, and istiod may send them
