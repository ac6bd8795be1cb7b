//lint:file-ignore SA1019 Envoy still honours its deprecated fields, and istiod may send them

package config

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

// StringMatch is a compiled Envoy StringMatcher.
type StringMatch func(string) bool

// compileString compiles an Envoy StringMatcher: exact, prefix, suffix,
// contains or RE2 regex (matched against the whole value), with
// ignore_case for all but regex, as Envoy's.
func compileString(m *matcherv3.StringMatcher) (StringMatch, error) {
	if m == nil {
		return nil, fmt.Errorf("string matcher: empty")
	}
	ic := m.GetIgnoreCase()
	fold := func(s string) string {
		if ic {
			return strings.ToLower(s)
		}
		return s
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		want := fold(p.Exact)
		return func(s string) bool { return fold(s) == want }, nil
	case *matcherv3.StringMatcher_Prefix:
		want := fold(p.Prefix)
		return func(s string) bool { return strings.HasPrefix(fold(s), want) }, nil
	case *matcherv3.StringMatcher_Suffix:
		want := fold(p.Suffix)
		return func(s string) bool { return strings.HasSuffix(fold(s), want) }, nil
	case *matcherv3.StringMatcher_Contains:
		want := fold(p.Contains)
		return func(s string) bool { return strings.Contains(fold(s), want) }, nil
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := compileRegex(p.SafeRegex)
		if err != nil {
			return nil, err
		}
		return re.MatchString, nil
	default:
		return nil, fmt.Errorf("string matcher: unsupported pattern %T", p)
	}
}

// compileRegex compiles an Envoy RegexMatcher (RE2, Go's regexp is RE2)
// to match a whole value, as Envoy's safe_regex does.
func compileRegex(m *matcherv3.RegexMatcher) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + m.GetRegex() + `)$`)
	if err != nil {
		return nil, fmt.Errorf("regex %q: %w", m.GetRegex(), err)
	}
	return re, nil
}

// Request is what route, RBAC and fault matching read of one request or
// connection. Header returns the values of a header (":method",
// ":authority", ":path" and ":scheme" included), joined with "," as
// Envoy joins repeated headers for matching.
type Request interface {
	Header(name string) (string, bool)
	// Path is the :path with the query, Query the query parameters.
	Path() string
	Query() map[string][]string
	// Destination and Source are the connection's local (as restored by
	// original_dst) and direct remote addresses.
	Destination() netip.AddrPort
	Source() netip.AddrPort
	// FilterState returns a string filter-state object.
	FilterState(key string) (string, bool)
	// PeerPrincipal is the URI SAN of the downstream TLS peer, if any.
	PeerPrincipal() (string, bool)
}

// HeaderMatch is a compiled Envoy HeaderMatcher.
type HeaderMatch func(Request) bool

func compileHeader(h *route.HeaderMatcher) (HeaderMatch, error) {
	name := strings.ToLower(h.GetName())
	if name == "" {
		return nil, fmt.Errorf("header matcher: no name")
	}
	var value func(v string, present bool) bool
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case nil:
		// Presence only.
		value = func(_ string, present bool) bool { return present }
	case *route.HeaderMatcher_PresentMatch:
		want := s.PresentMatch
		value = func(_ string, present bool) bool { return present == want }
	case *route.HeaderMatcher_StringMatch:
		m, err := compileString(s.StringMatch)
		if err != nil {
			return nil, fmt.Errorf("header %s: %w", name, err)
		}
		value = func(v string, present bool) bool { return present && m(v) }
	case *route.HeaderMatcher_ExactMatch:
		want := s.ExactMatch
		value = func(v string, present bool) bool { return present && v == want }
	case *route.HeaderMatcher_PrefixMatch:
		want := s.PrefixMatch
		value = func(v string, present bool) bool { return present && strings.HasPrefix(v, want) }
	case *route.HeaderMatcher_SuffixMatch:
		want := s.SuffixMatch
		value = func(v string, present bool) bool { return present && strings.HasSuffix(v, want) }
	case *route.HeaderMatcher_ContainsMatch:
		want := s.ContainsMatch
		value = func(v string, present bool) bool { return present && strings.Contains(v, want) }
	case *route.HeaderMatcher_SafeRegexMatch:
		re, err := compileRegex(s.SafeRegexMatch)
		if err != nil {
			return nil, fmt.Errorf("header %s: %w", name, err)
		}
		value = func(v string, present bool) bool { return present && re.MatchString(v) }
	case *route.HeaderMatcher_RangeMatch:
		r := s.RangeMatch
		value = func(v string, present bool) bool { return present && inRange(v, r) }
	default:
		return nil, fmt.Errorf("header %s: unsupported match %T", name, s)
	}
	invert := h.GetInvertMatch()
	treatMissingAsEmpty := h.GetTreatMissingHeaderAsEmpty()
	return func(r Request) bool {
		v, ok := r.Header(name)
		if !ok && treatMissingAsEmpty {
			v, ok = "", true
		}
		return value(v, ok) != invert
	}, nil
}

func inRange(v string, r *typev3.Int64Range) bool {
	var n int64
	if _, err := fmt.Sscan(v, &n); err != nil {
		return false
	}
	return n >= r.GetStart() && n < r.GetEnd()
}

// RouteMatch is a compiled route.RouteMatch.
type RouteMatch struct {
	path    func(string) bool
	headers []HeaderMatch
	query   []func(map[string][]string) bool
	connect bool
	prefix  string
	state   []func(Request) bool
}

// Matches reports whether r matches, with method the request's method.
func (m *RouteMatch) Matches(r Request, method string) bool {
	if m.connect != (method == "CONNECT") {
		return false
	}
	if m.path != nil {
		p, _, _ := strings.Cut(r.Path(), "?")
		if !m.path(p) {
			return false
		}
	}
	for _, h := range m.headers {
		if !h(r) {
			return false
		}
	}
	for _, f := range m.state {
		if !f(r) {
			return false
		}
	}
	if len(m.query) > 0 {
		q := r.Query()
		for _, f := range m.query {
			if !f(q) {
				return false
			}
		}
	}
	return true
}

func compileRouteMatch(m *route.RouteMatch) (*RouteMatch, error) {
	if m == nil {
		return nil, fmt.Errorf("route without match")
	}
	if m.GetGrpc() != nil {
		return nil, fmt.Errorf("route match: grpc matcher not supported")
	}
	if m.GetRuntimeFraction() != nil || len(m.GetDynamicMetadata()) > 0 || m.GetTlsContext() != nil {
		return nil, unsupported("route match: runtime_fraction, dynamic_metadata and tls_context")
	}
	out := &RouteMatch{}
	// filter_state: Istio matches a consumer route's source on the peer
	// principal the connect_terminate hop stored.
	for _, fs := range m.GetFilterState() {
		key := fs.GetKey()
		if fs.GetStringMatch() == nil {
			return nil, unsupported(fmt.Sprintf("route match: filter_state %s other than string_match", key))
		}
		sm, err := compileString(fs.GetStringMatch())
		if err != nil {
			return nil, fmt.Errorf("route match: filter_state %s: %w", key, err)
		}
		out.state = append(out.state, func(r Request) bool { v, ok := r.FilterState(key); return ok && sm(v) })
	}
	cs := m.GetCaseSensitive() == nil || m.GetCaseSensitive().GetValue()
	fold := func(s string) string {
		if cs {
			return s
		}
		return strings.ToLower(s)
	}
	switch p := m.GetPathSpecifier().(type) {
	case *route.RouteMatch_Prefix:
		want := fold(p.Prefix)
		out.prefix = p.Prefix
		out.path = func(s string) bool { return strings.HasPrefix(fold(s), want) }
	case *route.RouteMatch_Path:
		want := fold(p.Path)
		out.path = func(s string) bool { return fold(s) == want }
	case *route.RouteMatch_SafeRegex:
		re, err := compileRegex(p.SafeRegex)
		if err != nil {
			return nil, fmt.Errorf("route match: %w", err)
		}
		out.path = re.MatchString
	case *route.RouteMatch_PathSeparatedPrefix:
		want := fold(p.PathSeparatedPrefix)
		out.prefix = p.PathSeparatedPrefix
		out.path = func(s string) bool {
			s = fold(s)
			return s == want || strings.HasPrefix(s, want+"/")
		}
	case *route.RouteMatch_ConnectMatcher_:
		out.connect = true
	case nil:
		return nil, fmt.Errorf("route match: no path specifier")
	default:
		return nil, fmt.Errorf("route match: unsupported path specifier %T", p)
	}
	for _, h := range m.GetHeaders() {
		hm, err := compileHeader(h)
		if err != nil {
			return nil, fmt.Errorf("route match: %w", err)
		}
		out.headers = append(out.headers, hm)
	}
	for _, q := range m.GetQueryParameters() {
		name := q.GetName()
		switch s := q.GetQueryParameterMatchSpecifier().(type) {
		case *route.QueryParameterMatcher_PresentMatch:
			want := s.PresentMatch
			out.query = append(out.query, func(v map[string][]string) bool { _, ok := v[name]; return ok == want })
		case *route.QueryParameterMatcher_StringMatch:
			sm, err := compileString(s.StringMatch)
			if err != nil {
				return nil, fmt.Errorf("route match: query %s: %w", name, err)
			}
			// Envoy matches the first value of a repeated parameter.
			out.query = append(out.query, func(v map[string][]string) bool {
				vs, ok := v[name]
				return ok && len(vs) > 0 && sm(vs[0])
			})
		default:
			return nil, fmt.Errorf("route match: query %s: unsupported match %T", name, s)
		}
	}
	return out, nil
}

// CIDR matching, shared by RBAC and the IP matcher.
func cidr(r *core.CidrRange) (netip.Prefix, error) {
	a, err := netip.ParseAddr(r.GetAddressPrefix())
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("cidr %q: %w", r.GetAddressPrefix(), err)
	}
	bits := int(r.GetPrefixLen().GetValue())
	if r.GetPrefixLen() == nil {
		bits = a.BitLen()
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("cidr %s/%d: %w", a, bits, err)
	}
	return p, nil
}

// percent is a FractionalPercent as a probability in [0, 1].
func percent(p *typev3.FractionalPercent) float64 {
	if p == nil {
		return 1
	}
	d := 100.0
	switch p.GetDenominator() {
	case typev3.FractionalPercent_TEN_THOUSAND:
		d = 10000
	case typev3.FractionalPercent_MILLION:
		d = 1000000
	}
	return min(1, float64(p.GetNumerator())/d)
}

// Prefix is the path prefix a prefix or path_separated_prefix match
// names, for prefix_rewrite; "" for other matches.
func (m *RouteMatch) Prefix() string { return m.prefix }
