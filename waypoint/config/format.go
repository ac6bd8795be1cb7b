package config

import (
	"fmt"
	"net/netip"
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

// formatOperator compiles one operator with the access logs' parser
// (logformat.go), limited to what FormatContext offers.
func formatOperator(op string) (func(FormatContext) (string, bool), error) {
	p, err := parseOperator(op)
	if err != nil {
		return nil, err
	}
	switch p.Code {
	case OpReq:
		h, alt := p.Arg, p.Alt
		return func(c FormatContext) (string, bool) {
			if v, ok := c.Header(h); ok || alt == "" {
				return v, ok
			}
			return c.Header(alt)
		}, nil
	case OpDownstreamPeerURISAN:
		return func(c FormatContext) (string, bool) { return c.PeerPrincipal() }, nil
	case OpDownstreamLocalURISAN:
		return func(c FormatContext) (string, bool) { return c.LocalPrincipal() }, nil
	case OpDownstreamRemoteAddress, OpDownstreamDirectRemoteAddress:
		return func(c FormatContext) (string, bool) { return addrString(c.Source(), true) }, nil
	case OpDownstreamRemoteAddressWithoutPort, OpDownstreamDirectRemoteAddressWithoutPort:
		return func(c FormatContext) (string, bool) { return addrString(c.Source(), false) }, nil
	case OpDownstreamLocalAddress:
		return func(c FormatContext) (string, bool) { return addrString(c.Destination(), true) }, nil
	case OpDownstreamLocalAddressWithoutPort:
		return func(c FormatContext) (string, bool) { return addrString(c.Destination(), false) }, nil
	case OpFilterState:
		if p.Alt != "" {
			return nil, fmt.Errorf("operator %%%s%% with FIELD not supported here (only in access logs and span tags)", op)
		}
		key := p.Arg
		return func(c FormatContext) (string, bool) { return c.FilterState(key) }, nil
	case OpDynamicMetadata:
		ns, key := p.Arg, p.Alt
		return func(c FormatContext) (string, bool) { return c.DynamicMetadata(ns, key) }, nil
	default:
		return nil, fmt.Errorf("operator %%%s%% not supported", op)
	}
}
