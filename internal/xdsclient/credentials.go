package xdsclient

import (
	"context"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc/credentials"

	"github.com/ambitmesh/ambit/api"
)

// tokenFile sends "authorization: Bearer <token>" with every RPC, reading
// the token from the file each time: the kubelet rewrites a projected
// service-account token well before it expires, and a stream opened after
// that must carry the new one. With a cluster id it also sends
// "clusterid", which multi-cluster istiod uses to pick the cluster that
// reviews the token (Istio's ztunnel does the same).
//
// grpc-go's credentials/jwt reads a token file too, but keeps the token
// until shortly before its "exp" claim, so a token the kubelet replaced
// early (a restarted pod, a re-projected volume) would still be sent; and
// it is experimental. A read per stream costs nothing at one stream per
// connection.
type tokenFile struct {
	path      string
	clusterID string
}

var _ credentials.PerRPCCredentials = tokenFile{}

func (f tokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	b, err := os.ReadFile(f.path)
	if err != nil {
		return nil, fmt.Errorf("read xds token: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return nil, fmt.Errorf("read xds token %s: file is empty", f.path)
	}
	md := map[string]string{"authorization": "Bearer " + token}
	if f.clusterID != "" {
		md[api.ClusterIDMetadata] = f.clusterID
	}
	return md, nil
}

// RequireTransportSecurity keeps the token off plaintext connections.
func (tokenFile) RequireTransportSecurity() bool { return true }
