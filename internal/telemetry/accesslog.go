package telemetry

// The access log: one line per proxied connection, and the attribute
// keys every ztunnel log uses.

import (
	"context"
	"log/slog"
	"net/netip"
	"time"
)

// Attribute keys of ztunnel logs. They live here, once.
const (
	KeyDirection           = "direction"
	KeySourceAddr          = "src.addr"
	KeySourceWorkload      = "src.workload"
	KeySourceNamespace     = "src.namespace"
	KeySourceIdentity      = "src.identity"
	KeyDestinationAddr     = "dst.addr"
	KeyDestinationHBONE    = "dst.hbone_addr"
	KeyDestinationWorkload = "dst.workload"
	KeyDestinationService  = "dst.service"
	KeyDestinationIdentity = "dst.identity"
	KeyBytesSent           = "bytes_sent"
	KeyBytesReceived       = "bytes_recv"
	KeyDuration            = "duration"
	KeyError               = "error"
	KeyPolicy              = "policy"
	KeyAction              = "action"
	KeyResult              = "result"
	KeyAddr                = "addr"
	KeyNode                = "node"
	KeyComponent           = "component"
	KeyCount               = "count"
	KeyVersion             = "version"
	KeyConfig              = "config"
	KeyCA                  = "ca"
	KeySignal              = "signal"
	KeyDeadline            = "deadline"
	KeyIdentity            = "identity"
	KeySerial              = "serial"
	KeyExpires             = "expires"
	KeyNextRefresh         = "next_refresh"
)

// Directions.
const (
	Inbound          = "inbound"
	InboundPlaintext = "inbound_plaintext"
	Outbound         = "outbound"
)

// Attribute keys of the workload-discovery (xDS) client's logs.
const (
	KeyTypeURL = "type_url"
	KeyNonce   = "nonce"
	KeyRemoved = "removed"
	KeyBackoff = "backoff"
)

// Entry is what is known about one finished connection.
type Entry struct {
	Direction           string
	SourceAddr          netip.AddrPort
	SourceWorkload      string
	SourceNamespace     string
	SourceIdentity      string
	DestinationAddr     netip.AddrPort
	DestinationHBONE    netip.AddrPort
	DestinationWorkload string
	DestinationService  string
	DestinationIdentity string
	// Received is the bytes from the client, Sent the bytes to it.
	Received, Sent int64
	Duration       time.Duration
	Err            error
}

// Log writes e to l at Info, or at Warn when the connection failed.
func (e Entry) Log(l *slog.Logger) {
	attrs := []slog.Attr{
		slog.String(KeyDirection, e.Direction),
		slog.String(KeySourceAddr, addr(e.SourceAddr)),
		slog.String(KeyDestinationAddr, addr(e.DestinationAddr)),
	}
	add := func(k, v string) {
		if v != "" {
			attrs = append(attrs, slog.String(k, v))
		}
	}
	add(KeySourceWorkload, e.SourceWorkload)
	add(KeySourceNamespace, e.SourceNamespace)
	add(KeySourceIdentity, e.SourceIdentity)
	add(KeyDestinationHBONE, addr(e.DestinationHBONE))
	add(KeyDestinationWorkload, e.DestinationWorkload)
	add(KeyDestinationService, e.DestinationService)
	add(KeyDestinationIdentity, e.DestinationIdentity)
	attrs = append(attrs,
		slog.Int64(KeyBytesSent, e.Sent),
		slog.Int64(KeyBytesReceived, e.Received),
		slog.Duration(KeyDuration, e.Duration),
	)
	level := slog.LevelInfo
	if e.Err != nil {
		level = slog.LevelWarn
		attrs = append(attrs, slog.String(KeyError, e.Err.Error()))
	}
	l.LogAttrs(context.Background(), level, "connection complete", attrs...)
}

func addr(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
