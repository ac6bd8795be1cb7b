// Package authz evaluates L4 authorization policies for a connection the
// way Istio does: any matching DENY policy denies; with no ALLOW policy
// the connection is allowed; otherwise some ALLOW policy must match.
// Dry-run policies take no part.
//
// What a policy holds that was not understood (config.Authorization.Unknown,
// config.Match.Unknown) fails closed: it never makes an ALLOW match more
// or a DENY match less than the policy's author meant.
package authz

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// Conn is what policies see of a connection.
type Conn struct {
	// Source is the peer's verified identity; zero for plain text.
	Source      identity.Identity
	SourceIP    netip.Addr
	Destination netip.AddrPort
}

// ErrDenied is wrapped by every refusal.
var ErrDenied = errors.New("denied by authorization policy")

// Evaluate applies policies to c. It returns nil to allow, or an error
// wrapping ErrDenied that names the deciding policy.
func Evaluate(policies []*config.Authorization, c Conn) error {
	hasAllow := false
	for _, p := range policies {
		if p.DryRun {
			continue
		}
		switch p.Action {
		case config.Deny:
			if Matches(p, c) {
				return fmt.Errorf("%w: DENY policy %s matched", ErrDenied, p.Key())
			}
		case config.Allow:
			hasAllow = true
		default:
			// An action we do not understand must not open access.
			return fmt.Errorf("%w: policy %s has unknown action %q", ErrDenied, p.Key(), p.Action)
		}
	}
	if !hasAllow {
		return nil
	}
	for _, p := range policies {
		if !p.DryRun && p.Action == config.Allow && Matches(p, c) {
			return nil
		}
	}
	return fmt.Errorf("%w: no ALLOW policy matched", ErrDenied)
}

// DryRun is the verdict the dry-run policies among policies would reach
// if they were enforced alongside the others, and whether there were
// any: for the log, never for enforcement.
func DryRun(policies []*config.Authorization, c Conn) (verdict error, any bool) {
	if !slices.ContainsFunc(policies, func(p *config.Authorization) bool { return p.DryRun }) {
		return nil, false
	}
	enforced := make([]*config.Authorization, 0, len(policies))
	for _, p := range policies {
		q := *p
		q.DryRun = false
		enforced = append(enforced, &q)
	}
	return Evaluate(enforced, c), true
}

// Matches reports whether any rule of p matches c. A policy with parts
// that were not understood matches as its action's safe side demands.
func Matches(p *config.Authorization, c Conn) bool {
	if p.Unknown != "" {
		return p.Action != config.Allow
	}
	return slices.ContainsFunc(p.Rules, func(r config.Rule) bool { return ruleMatches(r, p.Action, c) })
}

func ruleMatches(r config.Rule, action config.Action, c Conn) bool {
	for _, cl := range r.Clauses {
		if !slices.ContainsFunc(cl.Matches, func(m config.Match) bool { return matchMatches(m, action, c) }) {
			return false
		}
	}
	return true
}

// matchMatches reports whether every condition of m holds for c. A
// condition that was not understood holds for nothing in an ALLOW policy
// and for everything otherwise (DENY): rules and clauses only combine
// matches with "and" and "or", so either choice carries through to the
// policy as a whole.
func matchMatches(m config.Match, action config.Action, c Conn) bool {
	if m.Unknown != "" && action == config.Allow {
		return false
	}
	ns := c.Source.Namespace
	principal := c.Source.Principal()
	src := c.SourceIP.Unmap()
	dst := c.Destination.Addr().Unmap()
	port := uint32(c.Destination.Port())
	return anyOrEmpty(m.Namespaces, func(s config.StringMatch) bool { return s.Matches(ns) }) &&
		none(m.NotNamespaces, func(s config.StringMatch) bool { return s.Matches(ns) }) &&
		anyOrEmpty(m.ServiceAccounts, func(s config.ServiceAccountMatch) bool { return s.Matches(c.Source) }) &&
		none(m.NotServiceAccounts, func(s config.ServiceAccountMatch) bool { return s.Matches(c.Source) }) &&
		anyOrEmpty(m.Principals, func(s config.StringMatch) bool { return s.Matches(principal) }) &&
		none(m.NotPrincipals, func(s config.StringMatch) bool { return s.Matches(principal) }) &&
		anyOrEmpty(m.SourceIPs, func(p netip.Prefix) bool { return p.Contains(src) }) &&
		none(m.NotSourceIPs, func(p netip.Prefix) bool { return p.Contains(src) }) &&
		anyOrEmpty(m.DestinationIPs, func(p netip.Prefix) bool { return p.Contains(dst) }) &&
		none(m.NotDestinationIPs, func(p netip.Prefix) bool { return p.Contains(dst) }) &&
		anyOrEmpty(m.DestinationPorts, func(p uint32) bool { return p == port }) &&
		none(m.NotDestinationPorts, func(p uint32) bool { return p == port })
}

func anyOrEmpty[T any](list []T, f func(T) bool) bool {
	return len(list) == 0 || slices.ContainsFunc(list, f)
}

func none[T any](list []T, f func(T) bool) bool {
	return !slices.ContainsFunc(list, f)
}
