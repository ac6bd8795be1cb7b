package interop_test

import (
	"bytes"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/ambitmesh/ambit/api/security"
	"github.com/ambitmesh/ambit/api/workload"
)

// difference is one intentional departure of Ambit's protos from Istio's:
// an element Istio has under another name in ours (istio and ours set),
// or one of ours that Istio lacks (istio empty). Elements are messages,
// enums and fields, by full name.
type difference struct {
	istio, ours protoreflect.FullName
	why         string
}

// differences is every intentional departure, and the only place to list
// one: TestProtosMatchIstio fails on any difference not listed here and
// on a listed one it no longer finds. None of them is on the wire: message
// and field names are not encoded, and these messages never travel in an
// Any (whose type URL would name them).
var differences = []difference{
	{"istio.security.Group", "istio.security.Rule", "named for what it is: a rule holds when all its clauses do"},
	{"istio.security.Rules", "istio.security.Clause", "named for what it is: a clause holds when any of its matches does"},
	{"istio.security.Authorization.groups", "istio.security.Authorization.rules", "field of the renamed Group"},
	{"istio.security.Group.rules", "istio.security.Rule.clauses", "field of the renamed Rules"},
	{"", "istio.workload.LoadBalancing.dns_connect_strategy", "in Istio's ztunnel's own workload.proto (same number); istiod at the pinned commit does not send it"},
	{"", "istio.workload.LoadBalancing.DnsConnectStrategy", "type of dns_connect_strategy"},
}

// istioFiles are the descriptors of Istio's workload API files and their
// imports, read from the istioprotos command (see its doc for why a
// process of its own).
func istioFiles(t *testing.T) *protoregistry.Files {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatalf("find the go command to run ./internal/istioprotos: %v", err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command("go", "run", "./internal/istioprotos")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go run ./internal/istioprotos: %v\n%s", err, stderr.Bytes())
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(out, &set); err != nil {
		t.Fatalf("decode Istio's descriptor set: %v", err)
	}
	files, err := protodesc.NewFiles(&set)
	if err != nil {
		t.Fatalf("build Istio's descriptors: %v", err)
	}
	return files
}

// TestProtosMatchIstio walks every message, field, enum and enum value of
// Istio's istio.workload and istio.security files (the Go code of
// istio.io/istio/pkg/workloadapi at the version go.mod requires) and
// checks that ours has each with the same number, name, kind, cardinality,
// presence, packing, oneof and type, and the same reserved numbers and
// names; then the reverse, that ours has nothing Istio lacks. Where the
// two differ on purpose, differences says so.
func TestProtosMatchIstio(t *testing.T) {
	istio := istioFiles(t)
	c := &comparison{t: t, used: map[int]bool{}}
	for _, f := range []struct {
		istio string
		ours  protoreflect.FileDescriptor
	}{
		{"workloadapi/workload.proto", workload.File_workload_workload_proto},
		{"workloadapi/security/authorization.proto", security.File_security_authorization_proto},
	} {
		fd, err := istio.FindFileByPath(f.istio)
		if err != nil {
			t.Fatalf("Istio's %s: %v", f.istio, err)
		}
		if fd.Package() != f.ours.Package() || fd.Syntax() != f.ours.Syntax() {
			t.Errorf("%s: got package %s (%s), want Istio's %s (%s)", f.ours.Path(), f.ours.Package(), f.ours.Syntax(), fd.Package(), fd.Syntax())
		}
		c.messages(fd.Messages())
		c.enums(fd.Enums())
		c.extras(f.ours.Messages(), f.ours.Enums())
	}
	for i, d := range differences {
		if !c.used[i] {
			t.Errorf("differences[%d] {%q, %q}: listed but not found; remove it", i, d.istio, d.ours)
		}
	}
	t.Logf("compared %d messages, %d fields, %d enums and %d enum values", c.nMsgs, c.nFields, c.nEnums, c.nValues)
}

type comparison struct {
	t *testing.T
	// used marks the entries of differences the walk met.
	used map[int]bool
	// matched are our elements that have Istio's counterpart.
	matched                         map[protoreflect.FullName]bool
	nMsgs, nFields, nEnums, nValues int
}

// ours maps an Istio element's full name to the name of ours.
func (c *comparison) ours(istio protoreflect.FullName) protoreflect.FullName {
	for i, d := range differences {
		if d.istio == istio {
			c.used[i] = true
			return d.ours
		}
	}
	// Inside a renamed message, the element keeps its name.
	if parent := istio.Parent(); parent != "" {
		if p := c.ours(parent); p != parent {
			return p.Append(istio.Name())
		}
	}
	return istio
}

// extra reports whether ours is listed as an element Istio lacks.
func (c *comparison) extra(ours protoreflect.FullName) bool {
	for i, d := range differences {
		if d.istio == "" && d.ours == ours {
			c.used[i] = true
			return true
		}
	}
	return false
}

func (c *comparison) match(name protoreflect.FullName) {
	if c.matched == nil {
		c.matched = map[protoreflect.FullName]bool{}
	}
	c.matched[name] = true
}

func (c *comparison) messages(ms protoreflect.MessageDescriptors) {
	for i := range ms.Len() {
		c.message(ms.Get(i))
	}
}

func (c *comparison) enums(es protoreflect.EnumDescriptors) {
	for i := range es.Len() {
		c.enum(es.Get(i))
	}
}

func (c *comparison) message(im protoreflect.MessageDescriptor) {
	t := c.t
	c.nMsgs++
	name := c.ours(im.FullName())
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(name)
	om, ok := d.(protoreflect.MessageDescriptor)
	if err != nil || !ok {
		t.Errorf("message %s: ours has no %s (%v)", im.FullName(), name, err)
		return
	}
	c.match(name)
	if got, want := reserved(om), reserved(im); got != want {
		t.Errorf("%s reserved: got %s, want Istio's %s", name, got, want)
	}
	ifs := im.Fields()
	for i := range ifs.Len() {
		c.field(ifs.Get(i), om)
	}
	ofs := om.Fields()
	for i := range ofs.Len() {
		of := ofs.Get(i)
		if ifs.ByNumber(of.Number()) == nil && !c.extra(of.FullName()) {
			t.Errorf("%s (%d): ours has it, Istio's %s does not; remove it or list it in differences", of.FullName(), of.Number(), im.FullName())
		}
	}
	c.messages(im.Messages())
	c.enums(im.Enums())
	c.extras(om.Messages(), om.Enums())
}

func (c *comparison) field(f protoreflect.FieldDescriptor, om protoreflect.MessageDescriptor) {
	t := c.t
	c.nFields++
	of := om.Fields().ByNumber(f.Number())
	if of == nil {
		t.Errorf("%s (%d): missing in ours (%s)", f.FullName(), f.Number(), om.FullName())
		return
	}
	if want := c.ours(f.FullName()).Name(); of.Name() != want {
		t.Errorf("%s field %d: got name %s, want %s", om.FullName(), f.Number(), of.Name(), want)
	}
	if got, want := shape(of), c.shape(f); got != want {
		t.Errorf("%s (%d):\n got  %s\n want %s (Istio's %s)", of.FullName(), f.Number(), got, want, f.FullName())
	}
}

// shape is everything about a field that decides its encoding and its
// generated API, but its name: kind, cardinality, presence, packing, the
// oneof it is in, and its message or enum type.
func shape(f protoreflect.FieldDescriptor) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s presence=%t packed=%t map=%t", f.Cardinality(), f.Kind(), f.HasPresence(), f.IsPacked(), f.IsMap())
	if o := f.ContainingOneof(); o != nil && !o.IsSynthetic() {
		fmt.Fprintf(&b, " oneof=%s", o.Name())
	}
	switch {
	case f.Message() != nil:
		fmt.Fprintf(&b, " type=%s", f.Message().FullName())
	case f.Enum() != nil:
		fmt.Fprintf(&b, " type=%s", f.Enum().FullName())
	}
	return b.String()
}

// shape is Istio's field's shape with its type named as ours.
func (c *comparison) shape(f protoreflect.FieldDescriptor) string {
	s := shape(f)
	var typ protoreflect.FullName
	switch {
	case f.Message() != nil:
		typ = f.Message().FullName()
	case f.Enum() != nil:
		typ = f.Enum().FullName()
	default:
		return s
	}
	return strings.TrimSuffix(s, string(typ)) + string(c.ours(typ))
}

func (c *comparison) enum(ie protoreflect.EnumDescriptor) {
	t := c.t
	c.nEnums++
	name := c.ours(ie.FullName())
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(name)
	oe, ok := d.(protoreflect.EnumDescriptor)
	if err != nil || !ok {
		t.Errorf("enum %s: ours has no %s (%v)", ie.FullName(), name, err)
		return
	}
	c.match(name)
	ivs, ovs := ie.Values(), oe.Values()
	for i := range ivs.Len() {
		c.nValues++
		iv := ivs.Get(i)
		ov := ovs.ByNumber(iv.Number())
		switch {
		case ov == nil:
			t.Errorf("%s.%s = %d: missing in ours", ie.FullName(), iv.Name(), iv.Number())
		case ov.Name() != iv.Name():
			t.Errorf("%s value %d: got %s, want %s", name, iv.Number(), ov.Name(), iv.Name())
		}
	}
	for i := range ovs.Len() {
		if ov := ovs.Get(i); ivs.ByNumber(ov.Number()) == nil && !c.extra(ov.FullName()) {
			t.Errorf("%s.%s = %d: ours has it, Istio's does not", name, ov.Name(), ov.Number())
		}
	}
}

// extras checks that our messages and enums without an Istio
// counterpart are listed in differences. It runs after the walk of their
// Istio siblings.
func (c *comparison) extras(ms protoreflect.MessageDescriptors, es protoreflect.EnumDescriptors) {
	for i := range ms.Len() {
		if m := ms.Get(i); !c.matched[m.FullName()] && !c.extra(m.FullName()) {
			c.t.Errorf("message %s: ours has it, Istio's does not", m.FullName())
		}
	}
	for i := range es.Len() {
		if e := es.Get(i); !c.matched[e.FullName()] && !c.extra(e.FullName()) {
			c.t.Errorf("enum %s: ours has it, Istio's does not", e.FullName())
		}
	}
}

// reserved lists a message's reserved numbers and names.
func reserved(m protoreflect.MessageDescriptor) string {
	var out []string
	rr := m.ReservedRanges()
	for i := range rr.Len() {
		r := rr.Get(i)
		out = append(out, fmt.Sprintf("%d-%d", r[0], r[1]-1))
	}
	rn := m.ReservedNames()
	for i := range rn.Len() {
		out = append(out, string(rn.Get(i)))
	}
	slices.Sort(out)
	return "[" + strings.Join(out, " ") + "]"
}
