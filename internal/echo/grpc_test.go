package echo

import (
	"errors"
	"io"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// startGRPC runs a Server with only a gRPC listener, and returns a client
// of it.
func startGRPC(t *testing.T) testgrpc.TestServiceClient {
	t.Helper()
	gl := listen(t)
	serve(t, nil, nil, gl)
	cc, err := grpc.NewClient("passthrough:///"+gl.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

func TestGRPCUnary(t *testing.T) {
	c := startGRPC(t)
	var hdr, trl metadata.MD
	resp, err := c.UnaryCall(t.Context(), &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte("hello")}}, grpc.Header(&hdr), grpc.Trailer(&trl))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetHostname() != "pod-a" || resp.GetServerId() != "pod-a" || string(resp.GetPayload().GetBody()) != "hello" {
		t.Errorf("UnaryCall: got hostname %q, server id %q, payload %q; want pod-a, pod-a, hello", resp.GetHostname(), resp.GetServerId(), resp.GetPayload().GetBody())
	}
	if got := hdr.Get(GRPCHostname); len(got) != 1 || got[0] != "pod-a" {
		t.Errorf("header %s: got %v, want [pod-a]", GRPCHostname, got)
	}
	if got := hdr.Get(GRPCPeer); len(got) != 1 || !strings.HasPrefix(got[0], "127.0.0.1:") {
		t.Errorf("header %s: got %v, want [127.0.0.1:<port>]", GRPCPeer, got)
	}
	if got := trl.Get(GRPCHostname); len(got) != 1 || got[0] != "pod-a" {
		t.Errorf("trailer %s: got %v, want [pod-a]", GRPCHostname, got)
	}

	// A requested status is the answer, with the trailer still there.
	trl = nil
	_, err = c.UnaryCall(t.Context(), &testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.NotFound), Message: "asked"}}, grpc.Trailer(&trl))
	if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != "asked" {
		t.Errorf("UnaryCall asking NotFound: got %v, want NotFound \"asked\"", err)
	}
	if got := trl.Get(GRPCHostname); len(got) != 1 || got[0] != "pod-a" {
		t.Errorf("trailer %s of the failed call: got %v, want [pod-a]", GRPCHostname, got)
	}

	// The TestService's other methods are not served.
	if _, err := c.EmptyCall(t.Context(), &testgrpc.Empty{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("EmptyCall: got %v, want Unimplemented", err)
	}
}

func TestGRPCFullDuplex(t *testing.T) {
	c := startGRPC(t)
	stream, err := c.FullDuplexCall(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := stream.Header()
	if err != nil {
		t.Fatal(err)
	}
	if got := hdr.Get(GRPCHostname); len(got) != 1 || got[0] != "pod-a" {
		t.Errorf("header %s: got %v, want [pod-a]", GRPCHostname, got)
	}
	// Each message is answered before the next is sent: the stream is
	// interactive, not buffered until the client closes.
	for _, msg := range []string{"one", "two", "three"} {
		if err := stream.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: []byte(msg)}}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if got := string(resp.GetPayload().GetBody()); got != msg {
			t.Errorf("stream answer: got %q, want %q", got, msg)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("after CloseSend: got %v, want io.EOF (status OK)", err)
	}
	if got := stream.Trailer().Get(GRPCHostname); len(got) != 1 || got[0] != "pod-a" {
		t.Errorf("trailer %s: got %v, want [pod-a]", GRPCHostname, got)
	}

	// A message asking for a status ends the stream with it.
	stream, err = c.FullDuplexCall(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&testgrpc.StreamingOutputCallRequest{ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.Aborted)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Aborted {
		t.Errorf("stream asking Aborted: got %v, want Aborted", err)
	}
}
