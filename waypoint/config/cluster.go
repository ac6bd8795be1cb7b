//lint:file-ignore SA1019 Envoy still honours its deprecated fields, and istiod may send them

package config

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	internalup "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/internal_upstream/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

func buildCluster(c *cluster.Cluster, cla map[string]*endpoint.ClusterLoadAssignment) (*Cluster, error) {
	if err := c.ValidateAll(); err != nil {
		return nil, err
	}
	out := &Cluster{Name: c.GetName(), ConnectTimeout: dur(c.GetConnectTimeout())}
	if out.ConnectTimeout == 0 {
		out.ConnectTimeout = defaultConnectTimeout
	}
	switch c.GetLbPolicy() {
	case cluster.Cluster_ROUND_ROBIN, cluster.Cluster_LEAST_REQUEST, cluster.Cluster_RANDOM, cluster.Cluster_CLUSTER_PROVIDED:
		// LEAST_REQUEST as Envoy's (see buildResilience); the others
		// round robin: with equal weights and one proxy the difference
		// is in tail behaviour only.
	default:
		return nil, unsupported(fmt.Sprintf("lb_policy %v", c.GetLbPolicy()))
	}
	if c.GetClusterType() != nil {
		return nil, unsupported("custom cluster_type")
	}
	var load *endpoint.ClusterLoadAssignment
	switch c.GetType() {
	case cluster.Cluster_STATIC:
		out.Type = ClusterStatic
		load = c.GetLoadAssignment()
	case cluster.Cluster_EDS:
		out.Type = ClusterEDS
		name := c.GetEdsClusterConfig().GetServiceName()
		if name == "" {
			name = c.GetName()
		}
		load = cla[name] // none yet: no endpoints
	case cluster.Cluster_ORIGINAL_DST:
		out.Type = ClusterOriginalDst
		out.PortOverride = uint16(c.GetOriginalDstLbConfig().GetUpstreamPortOverride().GetValue())
		if c.GetOriginalDstLbConfig().GetUseHttpHeader() {
			return nil, unsupported("original_dst_lb_config use_http_header")
		}
		if mk := c.GetOriginalDstLbConfig().GetMetadataKey(); mk != nil {
			// Istio's connect_originate: envoy.filters.listener.original_dst
			// / waypoint, a destination's waypoint to tunnel to instead.
			if len(mk.GetPath()) != 1 || mk.GetKey() == "" || mk.GetPath()[0].GetKey() == "" {
				return nil, unsupported("original_dst_lb_config metadata_key other than one key under a namespace")
			}
			out.DstMetadata = &MetadataKey{Namespace: mk.GetKey(), Key: mk.GetPath()[0].GetKey()}
		}
	default:
		return nil, unsupported(fmt.Sprintf("cluster type %v", c.GetType()))
	}
	if err := buildResilience(out, c); err != nil {
		return nil, err
	}
	eps, err := endpoints(load)
	if err != nil {
		return nil, err
	}
	ts, err := transportSocket(c, eps)
	if err != nil {
		return nil, err
	}
	if ts != nil {
		if err := clusterTransport(out, ts); err != nil {
			return nil, err
		}
	}
	out.Endpoints = eps
	for _, e := range eps {
		out.Prioritized = out.Prioritized || e.Priority != 0
	}
	return out, nil
}

// transportSocketMatch is the endpoint metadata namespace Envoy's
// transport_socket_matches compare against.
const transportSocketMatch = "envoy.transport_socket_match"

// transportSocket is the cluster's transport socket. With
// transport_socket_matches (Istio's outbound clusters: tlsMode-istio for
// endpoints whose metadata says tlsMode: istio, else plaintext), each
// endpoint takes the first match whose fields its
// envoy.transport_socket_match metadata all has, else the cluster's
// transport_socket, as in Envoy; the waypoint keeps one transport per
// cluster, so endpoints that would take different ones are not
// supported.
func transportSocket(c *cluster.Cluster, eps []*Endpoint) (*core.TransportSocket, error) {
	ms := c.GetTransportSocketMatches()
	if len(ms) == 0 {
		return c.GetTransportSocket(), nil
	}
	pick := func(md map[string]string) (*core.TransportSocket, error) {
	next:
		for _, m := range ms {
			for k, v := range m.GetMatch().GetFields() {
				sv, ok := v.GetKind().(*structpb.Value_StringValue)
				if !ok {
					return nil, unsupported(fmt.Sprintf("transport_socket_matches %s: a criterion other than a string", m.GetName()))
				}
				if got, found := md[k]; !found || got != sv.StringValue {
					continue next
				}
			}
			return m.GetTransportSocket(), nil
		}
		return c.GetTransportSocket(), nil
	}
	if len(eps) == 0 {
		return pick(nil)
	}
	var chosen *core.TransportSocket
	for i, e := range eps {
		ts, err := pick(e.Metadata[transportSocketMatch])
		if err != nil {
			return nil, err
		}
		if i > 0 && !proto.Equal(ts, chosen) {
			return nil, unsupported("transport_socket_matches picking different transports for endpoints of one cluster")
		}
		chosen = ts
	}
	return chosen, nil
}

// defaultConnectTimeout is Envoy's.
const defaultConnectTimeout = 5 * time.Second

func clusterTransport(out *Cluster, ts *core.TransportSocket) error {
	t := innerType(ts.GetTypedConfig())
	switch t {
	case "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport":
		var iu internalup.InternalUpstreamTransport
		if err := anyTo(ts.GetTypedConfig(), &iu); err != nil {
			return err
		}
		out.Internal = true
		for _, pm := range iu.GetPassthroughMetadata() {
			switch {
			case pm.GetKind().GetHost() != nil:
				out.PassthroughHost = append(out.PassthroughHost, pm.GetName())
			case pm.GetKind().GetCluster() != nil:
				// Cluster metadata (Istio's "istio" services) feeds
				// telemetry only; nothing on the data path reads it.
			default:
				return unsupported("internal_upstream passthrough metadata other than host and cluster")
			}
		}
		if inner := iu.GetTransportSocket(); inner != nil && !strings.HasSuffix(inner.GetTypedConfig().GetTypeUrl(), "RawBuffer") {
			return unsupported("internal_upstream wrapping a transport other than raw_buffer")
		}
	case "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer":
	case "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext":
		var u tlsv3.UpstreamTlsContext
		if err := anyTo(ts.GetTypedConfig(), &u); err != nil {
			return err
		}
		out.TLS = true
		ctx := u.GetCommonTlsContext()
		vc := ctx.GetCombinedValidationContext().GetDefaultValidationContext()
		if vc == nil {
			vc = ctx.GetValidationContext()
		}
		for _, m := range vc.GetMatchTypedSubjectAltNames() {
			if m.GetSanType() != tlsv3.SubjectAltNameMatcher_URI {
				return unsupported(fmt.Sprintf("SAN matcher of type %v", m.GetSanType()))
			}
			sm, err := compileString(m.GetMatcher())
			if err != nil {
				return fmt.Errorf("san matcher: %w", err)
			}
			out.SANMatch = append(out.SANMatch, sm)
		}
		for _, m := range vc.GetMatchSubjectAltNames() {
			sm, err := compileString(m)
			if err != nil {
				return fmt.Errorf("san matcher: %w", err)
			}
			out.SANMatch = append(out.SANMatch, sm)
		}
	default:
		return unsupported(fmt.Sprintf("transport socket %s (%s)", ts.GetName(), t))
	}
	return nil
}

func endpoints(load *endpoint.ClusterLoadAssignment) ([]*Endpoint, error) {
	var out []*Endpoint
	for _, lle := range load.GetEndpoints() {
		for _, le := range lle.GetLbEndpoints() {
			switch le.GetHealthStatus() {
			case core.HealthStatus_UNKNOWN, core.HealthStatus_HEALTHY, core.HealthStatus_DEGRADED:
			default:
				continue // unhealthy, draining, timeout: not picked
			}
			ep := le.GetEndpoint()
			if ep == nil {
				return nil, unsupported("lb endpoint by name")
			}
			e := &Endpoint{Metadata: map[string]map[string]string{}, Priority: lle.GetPriority()}
			switch a := ep.GetAddress().GetAddress().(type) {
			case *core.Address_SocketAddress:
				ip, err := netip.ParseAddr(a.SocketAddress.GetAddress())
				if err != nil {
					return nil, fmt.Errorf("endpoint address %q: %w", a.SocketAddress.GetAddress(), err)
				}
				e.Address = netip.AddrPortFrom(ip, uint16(a.SocketAddress.GetPortValue()))
			case *core.Address_EnvoyInternalAddress:
				e.Listener = a.EnvoyInternalAddress.GetServerListenerName()
				e.ID = a.EnvoyInternalAddress.GetEndpointId()
				if e.Listener == "" {
					return nil, fmt.Errorf("internal endpoint without server_listener_name")
				}
			default:
				return nil, unsupported(fmt.Sprintf("endpoint address %T", a))
			}
			for ns, st := range le.GetMetadata().GetFilterMetadata() {
				e.Metadata[ns] = stringFields(st)
			}
			e.name = e.makeName()
			out = append(out, e)
		}
	}
	return out, nil
}

// stringFields are a metadata struct's string fields, those of nested
// structs under their dotted path ("double_hbone.hbone_target_address").
func stringFields(st *structpb.Struct) map[string]string {
	out := map[string]string{}
	var walk func(prefix string, st *structpb.Struct)
	walk = func(prefix string, st *structpb.Struct) {
		for k, v := range st.GetFields() {
			switch x := v.GetKind().(type) {
			case *structpb.Value_StringValue:
				out[prefix+k] = x.StringValue
			case *structpb.Value_StructValue:
				walk(prefix+k+".", x.StructValue)
			}
		}
	}
	walk("", st)
	return out
}
