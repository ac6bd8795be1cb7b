package ambient

import (
	"errors"
	"fmt"
	"net/netip"

	"google.golang.org/protobuf/proto"

	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/istiod/xds"
)

// Type URLs of the ambient resources, the workload discovery API's.
const (
	AddressType       = "type.googleapis.com/istio.workload.Address"
	AuthorizationType = "type.googleapis.com/istio.security.Authorization"
)

// XDSTypes are the resource types of the ambient model, for istiod/xds to
// serve: Addresses, which on-demand clients may also name by address
// (AddressAliases), and Authorizations.
func XDSTypes() []xds.Type {
	return []xds.Type{{URL: AddressType, Aliases: AddressAliases}, {URL: AuthorizationType}}
}

// AddressAliases are the names an Address answers to besides its own, as
// in Istio: "<network>/<ip>" for each address of the workload or service.
func AddressAliases(m proto.Message) []string {
	a, ok := m.(*workload.Address)
	if !ok {
		return nil
	}
	var out []string
	if w := a.GetWorkload(); w != nil {
		for _, b := range w.GetAddresses() {
			if ip, ok := netip.AddrFromSlice(b); ok {
				out = append(out, w.GetNetwork()+"/"+ip.String())
			}
		}
	}
	for _, na := range a.GetService().GetAddresses() {
		if ip, ok := netip.AddrFromSlice(na.GetAddress()); ok {
			out = append(out, na.GetNetwork()+"/"+ip.String())
		}
	}
	return out
}

// Publisher takes what changed in the resources of one type (xds.Server).
type Publisher interface {
	Apply(typeURL string, changed map[string]proto.Message, removed []string) error
}

var _ Publisher = (*xds.Server)(nil)

// Publish hands the delta's resources to p: policies first, so that a
// workload never references a policy its client does not have yet.
func (d Delta) Publish(p Publisher) error {
	addrs := make(map[string]proto.Message, len(d.Addresses))
	for k, v := range d.Addresses {
		addrs[k] = v
	}
	auths := make(map[string]proto.Message, len(d.Authorizations))
	for k, v := range d.Authorizations {
		auths[k] = v
	}
	var errs []error
	if err := p.Apply(AuthorizationType, auths, d.RemovedAuthorizations); err != nil {
		errs = append(errs, fmt.Errorf("publish authorizations: %w", err))
	}
	if err := p.Apply(AddressType, addrs, d.RemovedAddresses); err != nil {
		errs = append(errs, fmt.Errorf("publish addresses: %w", err))
	}
	return errors.Join(errs...)
}
