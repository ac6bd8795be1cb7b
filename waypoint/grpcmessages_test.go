package waypoint_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// TestGRPCMessages: Istio's istio_request_messages_total and
// istio_response_messages_total count the gRPC messages of real calls
// through the waypoint each way, with only the peers' labels (as Istio's
// stats filter), and count a stream's messages while it is still open.
func TestGRPCMessages(t *testing.T) {
	e := newEnvWith(t, host, [2]uint16{80, 90}, [2]uint16{8080, 9090}, func(e *env) {
		e.cfg = grpcConfig(nil)(e.ip)
		startGRPC(t, netip.AddrPortFrom(e.ip(11), 7070), &grpcServer{})
	})
	client := e.grpcClient(t, 7070)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// A payload larger than a frame read: messages span reads.
	big := make([]byte, 100<<10)
	if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: big}}); err != nil {
		t.Fatalf("unary call: %v", err)
	}
	counts := func() (req, resp float64) {
		t.Helper()
		mfs := scrape(t, e.wp)
		for name, v := range map[string]*float64{"istio_request_messages_total": &req, "istio_response_messages_total": &resp} {
			mf := mfs[name]
			if mf == nil {
				t.Fatalf("metric %s: missing", name)
			}
			if mf.GetType() != dto.MetricType_COUNTER {
				t.Errorf("metric %s: type %v, want counter", name, mf.GetType())
			}
			m := find(t, mfs, name, map[string]string{"reporter": "waypoint"})
			var got []string
			for k := range labelsOf(m) {
				got = append(got, k)
			}
			slices.Sort(got)
			want := slices.Clone(istioTCPLabels[:len(istioTCPLabels)-3])
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("metric %s labels: got %v, want %v", name, got, want)
			}
			*v = m.GetCounter().GetValue()
		}
		return req, resp
	}
	if req, resp := counts(); req != 1 || resp != 1 {
		t.Errorf("after a unary call: got %v request and %v response messages, want 1 and 1", req, resp)
	}

	stream, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatalf("full duplex call: %v", err)
	}
	for i := range 5 {
		if err := stream.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: fmt.Appendf(nil, "message %d", i)}}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatalf("receive %d: %v", i, err)
		}
	}
	// The stream is open: its five messages each way are counted already
	// (the fifth answer reached the client, so the waypoint relayed both).
	if req, resp := counts(); req != 6 || resp != 6 {
		t.Errorf("with the stream open after 5 exchanges: got %v request and %v response messages, want 6 and 6", req, resp)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("end of stream: got %v, want EOF", err)
	}
	if req, resp := counts(); req != 6 || resp != 6 {
		t.Errorf("after the stream: got %v request and %v response messages, want 6 and 6", req, resp)
	}
}
