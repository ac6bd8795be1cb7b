// Package anytypes resolves the protobuf types of google.protobuf.Any
// values in an Envoy config dump leniently: a type linked into the
// program is itself, any other an empty message. Envoy's and Istio's xDS
// carry extensions of types a Go program need not link (Istio's proxy's
// peer metadata, metadata exchange, stats config); with the default
// resolver protojson fails on the first of them, and with it the whole
// dump. With Lenient, such a value keeps its type URL, and its fields are
// not shown (marshal) or are dropped (unmarshal with DiscardUnknown).
package anytypes

import (
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Lenient is a protojson resolver (MarshalOptions.Resolver,
// UnmarshalOptions.Resolver) over protoregistry.GlobalTypes that resolves
// an unknown message type URL to google.protobuf.Empty.
type Lenient struct{}

// FindMessageByURL resolves url, or gives Empty's type.
func (Lenient) FindMessageByURL(url string) (protoreflect.MessageType, error) {
	if mt, err := protoregistry.GlobalTypes.FindMessageByURL(url); err == nil {
		return mt, nil
	}
	return (&emptypb.Empty{}).ProtoReflect().Type(), nil
}

// FindMessageByName resolves name among the linked types.
func (Lenient) FindMessageByName(name protoreflect.FullName) (protoreflect.MessageType, error) {
	return protoregistry.GlobalTypes.FindMessageByName(name)
}

// FindExtensionByName resolves name among the linked extensions.
func (Lenient) FindExtensionByName(name protoreflect.FullName) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByName(name)
}

// FindExtensionByNumber resolves an extension field among the linked
// ones.
func (Lenient) FindExtensionByNumber(message protoreflect.FullName, field protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByNumber(message, field)
}
