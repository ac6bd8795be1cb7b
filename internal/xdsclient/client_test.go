package xdsclient

import (
	"errors"
	"strings"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const (
	typeA = "type.googleapis.com/test.A"
	typeB = "type.googleapis.com/test.B"
)

// stringsHandler is a Handler of resources that are StringValues: a value
// "bad" does not decode, and a held set with "invalid" in it is refused.
// current is the last set accepted as complete.
type stringsHandler struct {
	current map[string][]string
	checked int
}

func (h *stringsHandler) Decode(_ string, r *discovery.Resource) (any, error) {
	var v wrapperspb.StringValue
	if err := r.GetResource().UnmarshalTo(&v); err != nil {
		return nil, err
	}
	if v.Value == "bad" {
		return nil, errors.New("bad value")
	}
	return v.Value, nil
}

func (h *stringsHandler) Update(held Held, complete bool) error {
	st := map[string][]string{}
	for _, typ := range []string{typeA, typeB} {
		for _, v := range held.Values(typ) {
			if v == "invalid" {
				return errors.New("invalid state")
			}
			st[typ] = append(st[typ], v.(string))
		}
	}
	if complete {
		h.current = st
	} else {
		h.checked++
	}
	return nil
}

func resp(t *testing.T, typ, nonce string, res map[string]string, removed ...string) *discovery.DeltaDiscoveryResponse {
	t.Helper()
	r := &discovery.DeltaDiscoveryResponse{TypeUrl: typ, Nonce: nonce, RemovedResources: removed}
	for name, v := range res {
		a, err := anypb.New(wrapperspb.String(v))
		if err != nil {
			t.Fatal(err)
		}
		r.Resources = append(r.Resources, &discovery.Resource{Name: name, Version: "v-" + v, Resource: a})
	}
	return r
}

// TestHandle drives a client of two types without a stream: the set is
// only checked until both types arrived; a bad resource is left out and
// named in the NACK while the good ones apply; a set the handler refuses
// changes nothing; versions are what is held.
func TestHandle(t *testing.T) {
	h := &stringsHandler{}
	c, err := New(Config{Address: "127.0.0.1:1", Plaintext: true, Types: []string{typeA, typeB}, Handler: h})
	if err != nil {
		t.Fatal(err)
	}
	if req := c.Handle(resp(t, typeA, "1", map[string]string{"a1": "x"})); req.GetErrorDetail() != nil || req.GetResponseNonce() != "1" {
		t.Fatalf("first response of A: got %v, want an ACK of nonce 1", req)
	}
	if h.current != nil || h.checked != 1 {
		t.Fatalf("after A only: got current %v, %d checks; want none, 1 check", h.current, h.checked)
	}
	c.Handle(resp(t, typeB, "2", map[string]string{"b1": "y"}))
	if diff := cmp.Diff(map[string][]string{typeA: {"x"}, typeB: {"y"}}, h.current); diff != "" {
		t.Fatalf("after both types (-want +got):\n%s", diff)
	}
	req := c.Handle(resp(t, typeA, "3", map[string]string{"a2": "bad", "a3": "z"}))
	if msg := req.GetErrorDetail().GetMessage(); !strings.Contains(msg, "a2: bad value") {
		t.Errorf("NACK of a bad resource: got %q, want it to name a2", msg)
	}
	if diff := cmp.Diff(map[string][]string{typeA: {"x", "z"}, typeB: {"y"}}, h.current); diff != "" {
		t.Errorf("good resources of a NACKed response (-want +got):\n%s", diff)
	}
	before := c.Versions(typeA)
	req = c.Handle(resp(t, typeA, "4", map[string]string{"a4": "invalid"}, "a1"))
	if msg := req.GetErrorDetail().GetMessage(); msg != "invalid state" {
		t.Errorf("NACK of a refused set: got %q, want %q", msg, "invalid state")
	}
	if diff := cmp.Diff(before, c.Versions(typeA)); diff != "" {
		t.Errorf("versions after a refused set (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{"a1": "v-x", "a3": "v-z"}, before); diff != "" {
		t.Errorf("versions held (-want +got):\n%s", diff)
	}
}

// TestOptionalType: an optional type does not hold back completeness;
// when it arrives later it applies to the complete set at once.
func TestOptionalType(t *testing.T) {
	h := &stringsHandler{}
	c, err := New(Config{Address: "127.0.0.1:1", Plaintext: true, Types: []string{typeA, typeB}, Optional: []string{typeB}, Handler: h})
	if err != nil {
		t.Fatal(err)
	}
	c.Handle(resp(t, typeA, "1", map[string]string{"a1": "x"}))
	if diff := cmp.Diff(map[string][]string{typeA: {"x"}}, h.current); diff != "" {
		t.Fatalf("after A only, B optional (-want +got):\n%s", diff)
	}
	c.Handle(resp(t, typeB, "2", map[string]string{"b1": "y"}))
	if diff := cmp.Diff(map[string][]string{typeA: {"x"}, typeB: {"y"}}, h.current); diff != "" {
		t.Fatalf("after B (-want +got):\n%s", diff)
	}
}
