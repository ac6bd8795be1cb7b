package main

import (
	"testing"
)

// TestFlags: plaintext xDS and the debug endpoints are off unless asked
// for; the authenticated port and the monitoring port are on.
func TestFlags(t *testing.T) {
	tests := []struct {
		name                         string
		args                         []string
		wantXDS, wantSecure, wantMon string
		wantDebug                    bool
	}{
		{"defaults", nil, "", ":15012", ":15014", false},
		{"plaintext xDS", []string{"--xds-addr=:15010"}, ":15010", ":15012", ":15014", false},
		{"debug endpoints", []string{"--debug-endpoints"}, "", ":15012", ":15014", true},
	}
	// Gateway API is on unless turned off (istiod checks its CRDs).
	if o, err := parseFlags(nil); err != nil || !o.gatewayAPI {
		t.Errorf("defaults: got gateway api %t (%v), want on", o.gatewayAPI, err)
	}
	if o, err := parseFlags([]string{"--gateway-api=false"}); err != nil || o.gatewayAPI {
		t.Errorf("--gateway-api=false: got gateway api %t (%v), want off", o.gatewayAPI, err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseFlags(tc.args)
			if err != nil {
				t.Fatal(err)
			}
			c := o.cfg
			if c.XDSAddr != tc.wantXDS || c.SecureAddr != tc.wantSecure || c.MonitoringAddr != tc.wantMon || c.DebugEndpoints != tc.wantDebug {
				t.Errorf("got xds %q, secure %q, monitoring %q, debug endpoints %t; want %q, %q, %q, %t",
					c.XDSAddr, c.SecureAddr, c.MonitoringAddr, c.DebugEndpoints, tc.wantXDS, tc.wantSecure, tc.wantMon, tc.wantDebug)
			}
		})
	}
}
