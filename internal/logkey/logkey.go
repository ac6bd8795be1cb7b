// Package logkey is the one vocabulary of log attribute keys of Ambit's
// components: every slog attribute key is a constant here, so that one
// thing has one name in every log (an error is always "error", never
// sometimes "err") and a log query written for one component works for
// the others. Keys of the access log are the access log's fields
// (docs/architecture.md); changing one breaks the queries people wrote.
package logkey

// The connection: one access-log line per proxied connection.
const (
	Direction           = "direction"
	SourceAddr          = "src.addr"
	SourceWorkload      = "src.workload"
	SourceNamespace     = "src.namespace"
	SourceIdentity      = "src.identity"
	DestinationAddr     = "dst.addr"
	DestinationHBONE    = "dst.hbone_addr"
	DestinationWorkload = "dst.workload"
	DestinationService  = "dst.service"
	DestinationIdentity = "dst.identity"
	Waypoint            = "waypoint"
	BytesSent           = "bytes_sent"
	BytesReceived       = "bytes_recv"
	Duration            = "duration"
)

// Common keys.
const (
	Error     = "error"
	Reason    = "reason"
	Policy    = "policy"
	Action    = "action"
	Result    = "result"
	Addr      = "addr"
	Node      = "node"
	Namespace = "namespace"
	Component = "component"
	Count     = "count"
	Version   = "version"
	Config    = "config"
	Status    = "status"
	Signal    = "signal"
	Instance  = "instance"
	Deadline  = "deadline"
	// Object is "Kind/namespace/name" of a cluster object.
	Object = "object"
)

// Certificates.
const (
	CA          = "ca"
	Identity    = "identity"
	Serial      = "serial"
	Expires     = "expires"
	NextRefresh = "next_refresh"
)

// xDS clients.
const (
	TypeURL = "type_url"
	Nonce   = "nonce"
	Removed = "removed"
	Backoff = "backoff"
	// Subscribe and Unsubscribe count the names a request subscribes
	// to and unsubscribes from; Names lists resource names.
	Subscribe   = "subscribe"
	Unsubscribe = "unsubscribe"
	Names       = "names"
)

// The HBONE server: a peer, what it asked for, and the handshake bounds.
const (
	Peer        = "peer"
	PeerAddr    = "peer_addr"
	Authority   = "authority"
	InHandshake = "in_handshake"
	FromPeer    = "from_peer"
)

// The waypoint: Envoy's names for a request's parts and outcome.
const (
	Listener      = "listener"
	Chain         = "filter_chain"
	Cluster       = "cluster"
	Endpoint      = "endpoint"
	Method        = "method"
	Path          = "path"
	ResponseFlags = "response_flags"
	// GRPCStatus is a gRPC response's grpc-status.
	GRPCStatus = "grpc_status"
)
