package waypoint

import (
	"net/http"
	"strconv"
)

// requestRecord is what the connection manager knows of one request
// once it is answered, for logs and telemetry: the downstream protocol,
// the status sent, Envoy's response flags, and a gRPC response's
// grpc-status.
type requestRecord struct {
	// Protocol is "http" (HTTP/1) or "http/2", downstream.
	Protocol string
	Status   int
	// Flags are Envoy's response flags, "-" for none.
	Flags string
	// GRPCStatus is the gRPC status code the client got ("" when the
	// response is not gRPC): the upstream's grpc-status, or the one a
	// local reply to a gRPC request carries.
	GRPCStatus string
	// Cluster and Endpoint are where the last try went ("" when none).
	Cluster, Endpoint string
	// Retries counts the tries after the first.
	Retries int
}

// local records a local reply.
func (r *requestRecord) local(req *http.Request, status int, flag string) {
	r.Status, r.Flags = status, flag
	if isGRPC(req) {
		r.GRPCStatus = strconv.Itoa(grpcStatusFor(status))
	}
}
