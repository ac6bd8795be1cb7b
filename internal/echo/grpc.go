package echo

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Metadata keys of the gRPC service's response headers and trailers.
const (
	// GRPCHostname carries the server's Hostname, in the header and in
	// the trailer of every call.
	GRPCHostname = "x-echo-hostname"
	// GRPCPeer carries the client address as the server's socket saw it
	// (header only).
	GRPCPeer = "x-echo-peer"
)

// grpcService is grpc-go's interop TestService as the echo workload
// answers it: UnaryCall with the server's hostname and the request's
// payload, FullDuplexCall echoing each message. Other methods answer
// Unimplemented.
type grpcService struct {
	testgrpc.UnimplementedTestServiceServer
	s *Server
}

func (g grpcService) header(ctx context.Context) metadata.MD {
	md := metadata.Pairs(GRPCHostname, g.s.Hostname)
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		md.Set(GRPCPeer, p.Addr.String())
	}
	return md
}

// UnaryCall answers with Hostname (also as ServerId) and the request's
// payload; a request's ResponseStatus with a non-zero code is answered
// with that status instead, for tests of failures.
func (g grpcService) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	if err := grpc.SetHeader(ctx, g.header(ctx)); err != nil {
		return nil, err
	}
	if err := grpc.SetTrailer(ctx, metadata.Pairs(GRPCHostname, g.s.Hostname)); err != nil {
		return nil, err
	}
	if st := req.GetResponseStatus(); st.GetCode() != 0 {
		return nil, status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	return &testgrpc.SimpleResponse{
		Payload:  req.GetPayload(),
		Hostname: g.s.Hostname,
		ServerId: g.s.Hostname,
	}, nil
}

// FullDuplexCall sends back each message's payload as it arrives, until
// the client closes its side.
func (g grpcService) FullDuplexCall(stream testgrpc.TestService_FullDuplexCallServer) error {
	ctx := stream.Context()
	if err := stream.SendHeader(g.header(ctx)); err != nil {
		return err
	}
	stream.SetTrailer(metadata.Pairs(GRPCHostname, g.s.Hostname))
	for {
		in, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if st := in.GetResponseStatus(); st.GetCode() != 0 {
			return status.Error(codes.Code(st.GetCode()), st.GetMessage())
		}
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: in.GetPayload()}); err != nil {
			return err
		}
	}
}
