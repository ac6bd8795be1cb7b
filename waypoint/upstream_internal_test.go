package waypoint

import (
	"net/netip"
	"testing"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// TestOriginalDstMetadata: Istio's connect_originate cluster takes its
// destination from the endpoint's passthrough metadata field
// envoy.filters.listener.original_dst/waypoint when the endpoint has one
// (its waypoint), else from the connection's local address; the port is
// overridden either way.
func TestOriginalDstMetadata(t *testing.T) {
	c := &config.Cluster{Name: "connect_originate", PortOverride: 15008,
		DstMetadata: &config.MetadataKey{Namespace: metaOriginalDst, Key: "waypoint"}}
	local := netip.MustParseAddrPort("10.244.1.5:8080")
	for _, tc := range []struct {
		name string
		meta map[string]map[string]string
		want string
	}{
		{"no metadata", nil, "10.244.1.5:15008"},
		{"no waypoint field", map[string]map[string]string{metaOriginalDst: {"local": "10.244.1.5:8080"}}, "10.244.1.5:15008"},
		{"empty waypoint field", map[string]map[string]string{metaOriginalDst: {"waypoint": ""}}, "10.244.1.5:15008"},
		{"a waypoint", map[string]map[string]string{metaOriginalDst: {"local": "10.244.1.5:8080", "waypoint": "10.96.3.3:15008"}}, "10.96.3.3:15008"},
		{"a waypoint without port", map[string]map[string]string{metaOriginalDst: {"waypoint": "10.96.3.3"}}, "10.96.3.3:15008"},
	} {
		got := originalDst(c, &connInfo{local: local, meta: tc.meta})
		if got.String() != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
}
