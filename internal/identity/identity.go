// Package identity is the mesh's notion of who a workload is: SPIFFE
// identities (spiffe://<trust domain>/ns/<namespace>/sa/<service account>),
// a file-based test CA that issues short-lived workload certificates
// carrying them, the verification of a peer's certificate chain against
// the mesh roots that yields the peer's identity, and the certificate
// manager (Cache) that keeps the certificates of a node's workloads
// renewed from a Source.
package identity

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ambitmesh/ambit/internal/mesh"
)

// DefaultTrustDomain is the trust domain Istio uses when none is configured.
const DefaultTrustDomain = mesh.DefaultTrustDomain

// Identity is a workload identity in Istio's SPIFFE form.
type Identity struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// ErrInvalid is wrapped by Parse for any string that is not a workload
// identity.
var ErrInvalid = errors.New("invalid spiffe identity")

const scheme = "spiffe://"

// Parse reads spiffe://<td>/ns/<ns>/sa/<sa>.
func Parse(s string) (Identity, error) {
	rest, ok := strings.CutPrefix(s, scheme)
	if !ok {
		return Identity{}, fmt.Errorf("parse identity %q: %w: want prefix %q", s, ErrInvalid, scheme)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" {
		return Identity{}, fmt.Errorf("parse identity %q: %w: want spiffe://<td>/ns/<ns>/sa/<sa>", s, ErrInvalid)
	}
	id := Identity{TrustDomain: parts[0], Namespace: parts[2], ServiceAccount: parts[4]}
	if err := id.Validate(); err != nil {
		return Identity{}, fmt.Errorf("parse identity %q: %w", s, err)
	}
	return id, nil
}

// Validate reports whether every part of the identity is present and free
// of characters that would change its meaning.
func (id Identity) Validate() error {
	for _, p := range []struct{ name, v string }{
		{"trust domain", id.TrustDomain},
		{"namespace", id.Namespace},
		{"service account", id.ServiceAccount},
	} {
		if p.v == "" {
			return fmt.Errorf("%w: empty %s", ErrInvalid, p.name)
		}
		if strings.ContainsAny(p.v, "/?#%: \t\r\n") {
			return fmt.Errorf("%w: %s %q has a reserved character", ErrInvalid, p.name, p.v)
		}
	}
	return nil
}

// IsZero reports whether id is the zero Identity (no identity).
func (id Identity) IsZero() bool { return id == Identity{} }

// String formats the identity as a SPIFFE URI. The zero Identity formats
// as the empty string.
func (id Identity) String() string {
	if id.IsZero() {
		return ""
	}
	return scheme + id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// Principal is the identity as Istio authorization policies name it:
// the URI without its scheme, <td>/ns/<ns>/sa/<sa>.
func (id Identity) Principal() string {
	return strings.TrimPrefix(id.String(), scheme)
}

// MarshalText implements encoding.TextMarshaler.
func (id Identity) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (id *Identity) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*id = Identity{}
		return nil
	}
	p, err := Parse(string(b))
	if err != nil {
		return err
	}
	*id = p
	return nil
}
