// Package waypointtest runs Ambit's waypoint in process on one of
// istiod's golden waypoint configurations (waypoint/testdata/istiod),
// for the tests of what reads a waypoint's config dump and admin API
// (ambitctl's proxy-config, e2e's bookinfo checks). No traffic, no lab;
// tests only.
package waypointtest

import (
	"path/filepath"
	"runtime"
	"testing"

	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/waypoint"
	"github.com/ambitmesh/ambit/waypoint/config"
)

// Golden is a waypoint of service account waypoint in shop, with its
// own test CA, holding the golden configuration name (a file of
// waypoint/testdata/istiod, "service.json").
func Golden(t testing.TB, name string) *waypoint.Proxy {
	t.Helper()
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	id := identity.Identity{TrustDomain: identity.DefaultTrustDomain, Namespace: "shop", ServiceAccount: "waypoint"}
	p, err := waypoint.New(waypoint.Config{Identity: id, Certificates: ca, Roots: ca.Roots()})
	if err != nil {
		t.Fatal(err)
	}
	res, err := config.LoadFile(filepath.Join(goldenDir(t), name))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := res.Build()
	if err != nil {
		t.Fatal(err)
	}
	p.Update(snap)
	return p
}

// GoldenDump is Golden's config dump, as GET /config_dump answers it.
func GoldenDump(t testing.TB, name string) []byte {
	t.Helper()
	raw, err := Golden(t, name).ConfigDump()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// goldenDir is waypoint/testdata/istiod in the source tree this file is
// in (tests run with their sources).
func goldenDir(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("locate waypointtest's source: runtime.Caller failed")
	}
	return filepath.Join(filepath.Dir(file), "..", "testdata", "istiod")
}
