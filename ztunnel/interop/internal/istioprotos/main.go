// Command istioprotos writes the descriptors of Istio's ambient APIs, the
// files istio.workload and istio.security as generated into
// istio.io/istio/pkg/workloadapi, and of every file they import, to
// stdout as a binary google.protobuf.FileDescriptorSet.
//
// TestProtosMatchIstio runs it. Istio's generated Go code and Ambit's
// register the same proto names, and the protobuf runtime refuses both in
// one binary (a namespace conflict panics at init), so Istio's descriptors
// come from a process of their own.
package main

import (
	"fmt"
	"os"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "istioprotos:", err)
		os.Exit(1)
	}
}

func run() error {
	set := &descriptorpb.FileDescriptorSet{}
	seen := map[string]bool{}
	// Imports first, so that the set can be read back in order.
	var add func(fd protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if seen[fd.Path()] {
			return
		}
		seen[fd.Path()] = true
		imports := fd.Imports()
		for i := range imports.Len() {
			add(imports.Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(fd))
	}
	add(workloadapi.File_workloadapi_workload_proto)
	add(security.File_workloadapi_security_authorization_proto)
	b, err := proto.Marshal(set)
	if err != nil {
		return fmt.Errorf("encode descriptor set: %w", err)
	}
	if _, err := os.Stdout.Write(b); err != nil {
		return fmt.Errorf("write descriptor set: %w", err)
	}
	return nil
}
