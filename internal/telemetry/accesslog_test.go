package telemetry

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestEntryLog(t *testing.T) {
	tests := []struct {
		name  string
		entry Entry
		want  map[string]any
	}{
		{
			name: "complete",
			entry: Entry{
				Direction:           Inbound,
				SourceAddr:          netip.MustParseAddrPort("10.0.0.1:40000"),
				SourceIdentity:      "spiffe://cluster.local/ns/a/sa/b",
				DestinationAddr:     netip.MustParseAddrPort("10.0.0.2:8080"),
				DestinationWorkload: "server",
				Received:            10, Sent: 20, Duration: time.Second,
			},
			want: map[string]any{
				"level": "INFO", "msg": "connection complete", "direction": "inbound",
				"src.addr": "10.0.0.1:40000", "src.identity": "spiffe://cluster.local/ns/a/sa/b",
				"dst.addr": "10.0.0.2:8080", "dst.workload": "server",
				"bytes_recv": float64(10), "bytes_sent": float64(20), "duration": float64(time.Second),
			},
		},
		{
			name:  "failed",
			entry: Entry{Direction: Outbound, SourceAddr: netip.MustParseAddrPort("10.0.0.1:1"), Err: errors.New("refused")},
			want: map[string]any{
				"level": "WARN", "msg": "connection complete", "direction": "outbound",
				"src.addr": "10.0.0.1:1", "dst.addr": "", "error": "refused",
				"bytes_recv": float64(0), "bytes_sent": float64(0), "duration": float64(0),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			l := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{
				ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
					if a.Key == slog.TimeKey {
						return slog.Attr{}
					}
					return a
				},
			}))
			tt.entry.Log(l)
			var got map[string]any
			if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
				t.Fatalf("log line %q: %v", buf.String(), err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("log line (-want +got):\n%s", diff)
			}
		})
	}
}
