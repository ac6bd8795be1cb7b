package main

import (
	"strings"
	"testing"
)

// TestParse: the service comes from the first argument, or from the
// program's name when it is one of Istio's image names (as the lab and
// the real-node registry run Istio's bookinfo.yaml); the environment's
// SERVICE_VERSION wins over the name's.
func TestParse(t *testing.T) {
	tests := []struct {
		name        string
		prog        string
		args        []string
		env         map[string]string
		wantService string
		wantVersion string
		wantColor   string
		wantRatings bool
		wantAddr    string
		wantErr     string
	}{
		{name: "argument", prog: "/usr/local/bin/bookinfo", args: []string{"reviews"}, env: map[string]string{"SERVICE_VERSION": "v3"},
			wantService: "reviews", wantVersion: "v3", wantColor: "red", wantRatings: true, wantAddr: ":9080"},
		{name: "istio reviews v1", prog: "/lab/images/examples-bookinfo-reviews-v1", wantService: "reviews", wantVersion: "v1", wantColor: "black", wantAddr: ":9080"},
		{name: "istio reviews v2", prog: "examples-bookinfo-reviews-v2", wantService: "reviews", wantVersion: "v2", wantColor: "black", wantRatings: true, wantAddr: ":9080"},
		{name: "istio reviews v3 with flags", prog: "examples-bookinfo-reviews-v3", args: []string{"--addr", ":8080"},
			wantService: "reviews", wantVersion: "v3", wantColor: "red", wantRatings: true, wantAddr: ":8080"},
		{name: "environment wins", prog: "examples-bookinfo-reviews-v3", env: map[string]string{"SERVICE_VERSION": "v1"}, wantService: "reviews", wantVersion: "v1", wantColor: "black", wantAddr: ":9080"},
		{name: "istio productpage", prog: "examples-bookinfo-productpage-v1", wantService: "productpage", wantVersion: "v1", wantColor: "black", wantAddr: ":9080"},
		{name: "argument wins over name", prog: "examples-bookinfo-details-v1", args: []string{"ratings"}, wantService: "ratings", wantVersion: "v1", wantColor: "black", wantAddr: ":9080"},
		{name: "no service", prog: "bookinfo", wantErr: "no service"},
		{name: "unknown image", prog: "examples-bookinfo-cart-v1", wantErr: "no service"},
		{name: "bad reviews version in name", prog: "examples-bookinfo-reviews-v7", wantErr: `SERVICE_VERSION "v7"`},
		{name: "stray argument", prog: "bookinfo", args: []string{"details", "extra"}, wantErr: "unexpected arguments"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _, err := parse(tc.prog, tc.args, func(k string) string { return tc.env[k] })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got error %v, want one with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			if cfg.Service != tc.wantService || cfg.Version != tc.wantVersion || cfg.StarColor != tc.wantColor || cfg.EnableRatings != tc.wantRatings || cfg.Addr != tc.wantAddr {
				t.Errorf("got service %q version %q colour %q ratings %v addr %q, want %q %q %q %v %q", cfg.Service, cfg.Version, cfg.StarColor, cfg.EnableRatings, cfg.Addr,
					tc.wantService, tc.wantVersion, tc.wantColor, tc.wantRatings, tc.wantAddr)
			}
		})
	}
}
