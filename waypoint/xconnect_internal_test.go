package waypoint

import (
	"slices"
	"testing"
)

func TestExtendedConnectEnv(t *testing.T) {
	for _, tc := range []struct {
		name      string
		env, want []string
	}{
		{"no GODEBUG", []string{"A=1"}, []string{"A=1", "GODEBUG=http2xconnect=1"}},
		{"GODEBUG set", []string{"GODEBUG=memprofilerate=4096", "A=1"}, []string{"A=1", "GODEBUG=memprofilerate=4096,http2xconnect=1"}},
		{"GODEBUG twice: the first counts, as os.Getenv reads it", []string{"GODEBUG=a=1", "GODEBUG=b=2"}, []string{"GODEBUG=a=1,http2xconnect=1"}},
		{"GODEBUG empty", []string{"GODEBUG="}, []string{"GODEBUG=http2xconnect=1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := extendedConnectEnv(tc.env); !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
