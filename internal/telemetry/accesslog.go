package telemetry

// The access log: one line per proxied connection.

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"github.com/ambitmesh/ambit/internal/logkey"
)

// Directions.
const (
	Inbound          = "inbound"
	InboundPlaintext = "inbound_plaintext"
	Outbound         = "outbound"
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
	// Waypoint names the waypoint the connection went through.
	Waypoint string
	// Received is the bytes from the client, Sent the bytes to it.
	Received, Sent int64
	Duration       time.Duration
	Err            error
}

// Log writes e to l at Info, or at Warn when the connection failed.
func (e Entry) Log(l *slog.Logger) {
	attrs := []slog.Attr{
		slog.String(logkey.Direction, e.Direction),
		slog.String(logkey.SourceAddr, addr(e.SourceAddr)),
		slog.String(logkey.DestinationAddr, addr(e.DestinationAddr)),
	}
	add := func(k, v string) {
		if v != "" {
			attrs = append(attrs, slog.String(k, v))
		}
	}
	add(logkey.SourceWorkload, e.SourceWorkload)
	add(logkey.SourceNamespace, e.SourceNamespace)
	add(logkey.SourceIdentity, e.SourceIdentity)
	add(logkey.DestinationHBONE, addr(e.DestinationHBONE))
	add(logkey.DestinationWorkload, e.DestinationWorkload)
	add(logkey.DestinationService, e.DestinationService)
	add(logkey.DestinationIdentity, e.DestinationIdentity)
	add(logkey.Waypoint, e.Waypoint)
	attrs = append(attrs,
		slog.Int64(logkey.BytesSent, e.Sent),
		slog.Int64(logkey.BytesReceived, e.Received),
		slog.Duration(logkey.Duration, e.Duration),
	)
	level := slog.LevelInfo
	if e.Err != nil {
		level = slog.LevelWarn
		attrs = append(attrs, slog.String(logkey.Error, e.Err.Error()))
	}
	l.LogAttrs(context.Background(), level, "connection complete", attrs...)
}

func addr(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
