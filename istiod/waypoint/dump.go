package waypoint

import (
	"bytes"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// validator is what the protoc-gen-validate code gives every message.
type validator interface{ Validate() error }

// Validate checks every resource with its Validate, and every typed
// config inside it (an Any) with its own: PGV's Validate stops at an Any.
func (r *Resources) Validate() error {
	for _, l := range r.Listeners {
		if err := deepValidate(l); err != nil {
			return fmt.Errorf("%w: listener %s: %w", ErrInvalid, l.Name, err)
		}
	}
	for _, c := range r.Clusters {
		if err := deepValidate(c); err != nil {
			return fmt.Errorf("%w: cluster %s: %w", ErrInvalid, c.Name, err)
		}
	}
	for _, e := range r.Endpoints {
		if err := deepValidate(e); err != nil {
			return fmt.Errorf("%w: endpoints %s: %w", ErrInvalid, e.ClusterName, err)
		}
	}
	return nil
}

func deepValidate(m proto.Message) error {
	if v, ok := m.(validator); ok {
		if err := v.Validate(); err != nil {
			return err
		}
	}
	var err error
	walkAnys(m.ProtoReflect(), func(a *anypb.Any) {
		if err != nil {
			return
		}
		inner, uerr := a.UnmarshalNew()
		if uerr != nil {
			// Types the Envoy protos do not know (Istio's, inside a
			// TypedStruct) are not here; an Any of an unknown type is.
			err = fmt.Errorf("typed config %s: %w", a.TypeUrl, uerr)
			return
		}
		if verr := deepValidate(inner); verr != nil {
			err = fmt.Errorf("typed config %s: %w", a.TypeUrl, verr)
		}
	})
	return err
}

// walkAnys calls f with every Any directly reachable from m without
// crossing another Any.
func walkAnys(m protoreflect.Message, f func(*anypb.Any)) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		visit := func(v protoreflect.Value) {
			msg := v.Message()
			if a, ok := msg.Interface().(*anypb.Any); ok {
				f(a)
				return
			}
			walkAnys(msg, f)
		}
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				visit(l.Get(i))
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				visit(mv)
				return true
			})
		case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
			visit(v)
		}
		return true
	})
}

// JSON renders the resources as {"listeners": [...], "clusters": [...],
// "endpoints": [...]}, each resource in protojson with the protos' field
// names (as Envoy's /config_dump shows them), indented, keys sorted:
// the same resources always give the same bytes.
func (r *Resources) JSON() ([]byte, error) {
	conv := func(ms []proto.Message) ([]any, error) {
		out := make([]any, 0, len(ms))
		for _, m := range ms {
			b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
			if err != nil {
				return nil, fmt.Errorf("marshal %T: %w", m, err)
			}
			// protojson's spacing is unstable by design; reformat.
			var v any
			d := json.NewDecoder(bytes.NewReader(b))
			d.UseNumber()
			if err := d.Decode(&v); err != nil {
				return nil, fmt.Errorf("reformat %T: %w", m, err)
			}
			out = append(out, v)
		}
		return out, nil
	}
	var doc struct {
		Listeners []any `json:"listeners"`
		Clusters  []any `json:"clusters"`
		Endpoints []any `json:"endpoints"`
	}
	var err error
	if doc.Listeners, err = conv(messages(r.Listeners)); err != nil {
		return nil, err
	}
	if doc.Clusters, err = conv(messages(r.Clusters)); err != nil {
		return nil, err
	}
	if doc.Endpoints, err = conv(messages(r.Endpoints)); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("marshal resources: %w", err)
	}
	return out.Bytes(), nil
}

func messages[M proto.Message](ms []M) []proto.Message {
	out := make([]proto.Message, len(ms))
	for i, m := range ms {
		out[i] = m
	}
	return out
}
