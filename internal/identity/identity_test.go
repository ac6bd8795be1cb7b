package identity

import (
	"crypto/tls"
	"errors"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    Identity
		wantErr bool
	}{
		{in: "spiffe://cluster.local/ns/shop/sa/reviews", want: Identity{"cluster.local", "shop", "reviews"}},
		{in: "spiffe://td/ns/a/sa/b", want: Identity{"td", "a", "b"}},
		{in: "", wantErr: true},
		{in: "cluster.local/ns/shop/sa/reviews", wantErr: true},
		{in: "spiffe://cluster.local/ns/shop", wantErr: true},
		{in: "spiffe://cluster.local/sa/x/ns/y", wantErr: true},
		{in: "spiffe://cluster.local/ns//sa/x", wantErr: true},
		{in: "spiffe:///ns/a/sa/b", wantErr: true},
		{in: "spiffe://td/ns/a/sa/b/extra", wantErr: true},
		{in: "spiffe://td/ns/a%2f/sa/b", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.wantErr {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("Parse(%q): got err %v, want ErrInvalid", tt.in, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Parse(%q) (-want +got):\n%s", tt.in, diff)
			}
			if got.String() != tt.in {
				t.Errorf("String(): got %q, want %q", got.String(), tt.in)
			}
		})
	}
}

func TestPrincipal(t *testing.T) {
	id := Identity{"cluster.local", "ns1", "sa1"}
	if got, want := id.Principal(), "cluster.local/ns/ns1/sa/sa1"; got != want {
		t.Errorf("Principal(): got %q, want %q", got, want)
	}
	if got := (Identity{}).String(); got != "" {
		t.Errorf("zero String(): got %q, want empty", got)
	}
}

func newCA(t *testing.T) *CA {
	t.Helper()
	ca, err := NewCA(DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestVerify(t *testing.T) {
	ca := newCA(t)
	other := newCA(t)
	alice := Identity{"cluster.local", "shop", "alice"}
	bob := Identity{"cluster.local", "shop", "bob"}
	issue := func(c *CA, id Identity, nb, na time.Time) *tls.Certificate {
		t.Helper()
		cert, err := c.IssueValidity(id, nb, na)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	now := time.Now()
	good := issue(ca, alice, now.Add(-time.Minute), now.Add(time.Hour))
	// A certificate without any URI SAN, signed by the mesh CA.
	noSAN := issue(ca, alice, now.Add(-time.Minute), now.Add(time.Hour))
	noSAN.Leaf.URIs = nil
	noSANCert, err := ca.signTemplateForTest(noSAN, nil)
	if err != nil {
		t.Fatal(err)
	}
	httpsSAN, err := ca.signTemplateForTest(noSAN, []*url.URL{{Scheme: "https", Host: "example.com"}})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		chain  [][]byte
		expect *Identity
		want   Identity
		err    error
	}{
		{name: "valid", chain: good.Certificate, want: alice},
		{name: "valid expected", chain: good.Certificate, expect: &alice, want: alice},
		{name: "no certificate", chain: nil, err: ErrNoPeerCertificate},
		{name: "garbage", chain: [][]byte{[]byte("junk")}, err: ErrBadCertificate},
		{name: "untrusted root", chain: issue(other, alice, now.Add(-time.Minute), now.Add(time.Hour)).Certificate, err: ErrUntrustedRoot},
		{name: "expired", chain: issue(ca, alice, now.Add(-2*time.Hour), now.Add(-time.Hour)).Certificate, err: ErrExpired},
		{name: "not yet valid", chain: issue(ca, alice, now.Add(time.Hour), now.Add(2*time.Hour)).Certificate, err: ErrExpired},
		{name: "wrong san", chain: good.Certificate, expect: &bob, err: ErrWrongIdentity},
		{name: "no san", chain: [][]byte{noSANCert}, err: ErrNoIdentity},
		{name: "non-spiffe san", chain: [][]byte{httpsSAN}, err: ErrNoIdentity},
	}
	v := &Verifier{Roots: ca.Roots()}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got Identity
			var err error
			if tt.expect != nil {
				got, err = v.VerifyExpected(tt.chain, *tt.expect)
			} else {
				got, err = v.Verify(tt.chain)
			}
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("got err %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("got err %v, want nil", err)
			}
			if got != tt.want {
				t.Errorf("got identity %s, want %s", got, tt.want)
			}
		})
	}
}

func TestCAFiles(t *testing.T) {
	ca := newCA(t)
	dir := filepath.Join(t.TempDir(), "ca")
	if err := ca.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	id := Identity{"cluster.local", "a", "b"}
	cert, err := loaded.Issue(id, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	v := &Verifier{Roots: ca.Roots()}
	got, err := v.Verify(cert.Certificate)
	if err != nil {
		t.Fatalf("verify certificate from reloaded ca: %v", err)
	}
	if got != id {
		t.Errorf("got %s, want %s", got, id)
	}
	if _, err := LoadCA(t.TempDir()); err == nil {
		t.Error("LoadCA(empty dir): got nil error, want one")
	}
}
