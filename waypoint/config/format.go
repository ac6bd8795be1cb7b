package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// FormatContext is what Envoy's format strings read.
type FormatContext interface {
	Header(name string) (string, bool)
	FilterState(key string) (string, bool)
	// DynamicMetadata is a string field of the connection's dynamic
	// metadata: on an internal listener, the metadata its endpoint
	// passed through (internal_upstream's passthrough_metadata).
	DynamicMetadata(namespace, key string) (string, bool)
	PeerPrincipal() (string, bool)
	LocalPrincipal() (string, bool)
	Destination() netip.AddrPort
	Source() netip.AddrPort
}

// Format is a compiled Envoy substitution format string, limited to the
// operators a waypoint's config uses: %REQ(h)%, %DOWNSTREAM_PEER_URI_SAN%,
// %DOWNSTREAM_LOCAL_URI_SAN%, %DOWNSTREAM_REMOTE_ADDRESS%,
// %DOWNSTREAM_LOCAL_ADDRESS% (and their _WITHOUT_PORT forms) and
// %FILTER_STATE(key:PLAIN)% and %DYNAMIC_METADATA(namespace:key)%;
// other operators are refused.
type Format struct {
	parts []formatPart
	src   string
}

type formatPart struct {
	literal string
	eval    func(FormatContext) (string, bool)
}

func (f *Format) String() string { return f.src }

// Eval renders f. An operator without a value renders "-", as Envoy's,
// and ok is false if any did.
func (f *Format) Eval(c FormatContext) (string, bool) {
	var b strings.Builder
	ok := true
	for _, p := range f.parts {
		if p.eval == nil {
			b.WriteString(p.literal)
			continue
		}
		v, has := p.eval(c)
		if !has {
			v, ok = "-", false
		}
		b.WriteString(v)
	}
	return b.String(), ok
}

// ParseFormat compiles an Envoy format string.
func ParseFormat(s string) (*Format, error) {
	f := &Format{src: s}
	err := scanFormat(s, func(lit string) { f.parts = append(f.parts, formatPart{literal: lit}) }, func(op string) error {
		ev, err := formatOperator(op)
		f.parts = append(f.parts, formatPart{eval: ev})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("format %q: %w", s, err)
	}
	return f, nil
}

func addrString(a netip.AddrPort, port bool) (string, bool) {
	if !a.IsValid() {
		return "", false
	}
	if port {
		return a.String(), true
	}
	return a.Addr().String(), true
}

func formatOperator(op string) (func(FormatContext) (string, bool), error) {
	name, arg, hasArg := strings.Cut(op, "(")
	if hasArg {
		if !strings.HasSuffix(arg, ")") {
			return nil, fmt.Errorf("operator %s: unbalanced parenthesis", op)
		}
		arg = strings.TrimSuffix(arg, ")")
	}
	switch name {
	case "REQ":
		h, _, _ := strings.Cut(arg, "?") // REQ(a?b): the first present
		h = strings.ToLower(h)
		if h == "" {
			return nil, fmt.Errorf("operator %s: no header", op)
		}
		return func(c FormatContext) (string, bool) { return c.Header(h) }, nil
	case "DOWNSTREAM_PEER_URI_SAN":
		return func(c FormatContext) (string, bool) { return c.PeerPrincipal() }, nil
	case "DOWNSTREAM_LOCAL_URI_SAN":
		return func(c FormatContext) (string, bool) { return c.LocalPrincipal() }, nil
	case "DOWNSTREAM_REMOTE_ADDRESS", "DOWNSTREAM_DIRECT_REMOTE_ADDRESS":
		return func(c FormatContext) (string, bool) { return addrString(c.Source(), true) }, nil
	case "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT":
		return func(c FormatContext) (string, bool) { return addrString(c.Source(), false) }, nil
	case "DOWNSTREAM_LOCAL_ADDRESS":
		return func(c FormatContext) (string, bool) { return addrString(c.Destination(), true) }, nil
	case "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":
		return func(c FormatContext) (string, bool) { return addrString(c.Destination(), false) }, nil
	case "FILTER_STATE":
		key, how, _ := strings.Cut(arg, ":")
		if how != "" && how != "PLAIN" && how != "TYPED" {
			return nil, fmt.Errorf("operator %s: only PLAIN and TYPED serialisations", op)
		}
		return func(c FormatContext) (string, bool) { return c.FilterState(key) }, nil
	case "DYNAMIC_METADATA":
		// namespace:key[:key...]: the waypoint keeps a namespace's
		// string fields flat, a nested one under its dotted path.
		parts := strings.Split(arg, ":")
		if len(parts) < 2 || slices.Contains(parts, "") {
			return nil, fmt.Errorf("operator %s: want DYNAMIC_METADATA(namespace:key[:key...])", op)
		}
		key := strings.Join(parts[1:], ".")
		return func(c FormatContext) (string, bool) { return c.DynamicMetadata(parts[0], key) }, nil
	default:
		return nil, fmt.Errorf("operator %%%s%% not supported", op)
	}
}
