package waypoint

import (
	"fmt"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// fieldSet is the set of an Istio API message's fields a waypoint
// applies, as dotted proto field paths without list indexes or map keys
// ("http.match.uri.exact"). A field that is set and not in the set is
// unsupported: the object is refused as a whole and its status names the
// field, rather than applied without it.
type fieldSet map[string]bool

func newFieldSet(paths ...string) fieldSet {
	s := fieldSet{}
	for _, p := range paths {
		// A path allows its parents.
		for {
			s[p] = true
			i := strings.LastIndexByte(p, '.')
			if i < 0 {
				break
			}
			p = p[:i]
		}
	}
	return s
}

// leafMessages are messages checked as values, not field by field.
var leafMessages = map[protoreflect.FullName]bool{
	"google.protobuf.Duration":    true,
	"google.protobuf.UInt32Value": true,
	"google.protobuf.Int32Value":  true,
	"google.protobuf.BoolValue":   true,
	"google.protobuf.DoubleValue": true,
}

// unsupported lists the set fields of m that are not in s, as the user
// wrote them: JSON names with list indexes and map keys
// ("http[0].corsPolicy"), sorted.
func (s fieldSet) unsupported(m proto.Message) []string {
	var out []string
	var walk func(m protoreflect.Message, path, shown string)
	walk = func(m protoreflect.Message, path, shown string) {
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			p := string(fd.Name())
			sh := fd.JSONName()
			if path != "" {
				p = path + "." + p
				sh = shown + "." + sh
			}
			if !s[p] {
				out = append(out, sh)
				return true
			}
			isMsg := func(d protoreflect.FieldDescriptor) bool {
				return d.Kind() == protoreflect.MessageKind && !leafMessages[d.Message().FullName()]
			}
			switch {
			case fd.IsList() && isMsg(fd):
				l := v.List()
				for i := 0; i < l.Len(); i++ {
					walk(l.Get(i).Message(), p, fmt.Sprintf("%s[%d]", sh, i))
				}
			case fd.IsMap() && isMsg(fd.MapValue()):
				v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
					walk(mv.Message(), p, fmt.Sprintf("%s[%s]", sh, k.String()))
					return true
				})
			case !fd.IsList() && !fd.IsMap() && isMsg(fd):
				walk(v.Message(), p, sh)
			}
			return true
		})
	}
	walk(m.ProtoReflect(), "", "")
	sort.Strings(out)
	return out
}
