package origdst

import (
	"net"
	"net/netip"
	"testing"
)

func TestLocalAddrs(t *testing.T) {
	var l LocalAddrs
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, ia := range addrs {
		p, err := netip.ParsePrefix(ia.String())
		if err != nil {
			continue
		}
		if !l.Contains(p.Addr()) {
			t.Errorf("Contains(%s), an interface address: got false, want true", p.Addr())
		}
	}
	for _, a := range []string{"127.0.0.1", "127.9.9.9", "::1", "0.0.0.0", "::ffff:127.0.0.1"} {
		if !l.Contains(netip.MustParseAddr(a)) {
			t.Errorf("Contains(%s): got false, want true", a)
		}
	}
	// A documentation address (RFC 5737) no interface here holds; only
	// looked up, never dialled.
	if a := netip.MustParseAddr("203.0.113.77"); l.Contains(a) {
		t.Errorf("Contains(%s): got true, want false", a)
	}
}
