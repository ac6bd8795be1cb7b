package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/ambitmesh/ambit/cni/install"
	"github.com/ambitmesh/ambit/internal/logkey"
)

// PluginKubeconfigEvery is how often the agent reads the plugin's
// kubeconfig from its source again, so that a rotated token reaches the
// plugin. The kubelet rotates a pod's token at 80% of its life, an hour
// by default.
const PluginKubeconfigEvery = time.Minute

// PluginKubeconfigFile is a source of the plugin's kubeconfig: the file
// at path, as it is.
func PluginKubeconfigFile(path string) func() ([]byte, error) {
	return func() ([]byte, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read plugin kubeconfig: %w", err)
		}
		return b, nil
	}
}

// InClusterPluginKubeconfig is a source of the plugin's kubeconfig made
// from the agent's in-cluster credentials: the apiserver's address, its
// CA and the service-account token, read again at each call. The plugin
// runs on the host, outside the agent's container, so the kubeconfig
// carries the CA and token themselves, never paths inside the container.
//
// The token is the agent pod's, bound to that pod: from the moment the
// pod is deleted (an upgrade, a node drain) the apiserver refuses it,
// and the plugin can no longer tell a pod of the mesh from any other,
// so every pod of the node fails to start until a new agent writes new
// credentials. TokenRequestPluginKubeconfig does not have that window.
func InClusterPluginKubeconfig(rc *rest.Config) func() ([]byte, error) {
	return func() ([]byte, error) {
		token := rc.BearerToken
		if rc.BearerTokenFile != "" {
			b, err := os.ReadFile(rc.BearerTokenFile)
			if err != nil {
				return nil, fmt.Errorf("read service account token for the plugin: %w", err)
			}
			token = strings.TrimSpace(string(b))
		}
		if token == "" {
			return nil, errors.New("make plugin kubeconfig: the agent's credentials have no token")
		}
		return pluginKubeconfig(rc, token)
	}
}

// pluginKubeconfig is a kubeconfig of rc's apiserver, with its CA, and
// token.
func pluginKubeconfig(rc *rest.Config, token string) ([]byte, error) {
	ca := rc.TLSClientConfig.CAData
	if len(ca) == 0 && rc.TLSClientConfig.CAFile != "" {
		var err error
		if ca, err = os.ReadFile(rc.TLSClientConfig.CAFile); err != nil {
			return nil, fmt.Errorf("read apiserver CA for the plugin: %w", err)
		}
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["cluster"] = &clientcmdapi.Cluster{Server: rc.Host, CertificateAuthorityData: ca}
	cfg.AuthInfos["ambit-cni"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["ambit-cni"] = &clientcmdapi.Context{Cluster: "cluster", AuthInfo: "ambit-cni"}
	cfg.CurrentContext = "ambit-cni"
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		return nil, fmt.Errorf("make plugin kubeconfig: %w", err)
	}
	return b, nil
}

// PluginTokenLifetime is the life of a token the agent requests for the
// plugin (TokenRequestPluginKubeconfig); a new one is requested once
// half of it has passed.
const PluginTokenLifetime = time.Hour

// TokenRequestPluginKubeconfig is a source of the plugin's kubeconfig
// with the apiserver's address and CA from rc and a token the agent
// requests (the TokenRequest API) for the plugin's own service account
// sa, bound to this node (node). The plugin reads with it only what it
// needs (pods and namespaces, the chart's ambit-cni-plugin role), and
// its credentials outlive the agent's pod: a token bound to a Node is
// refused once the node or sa is deleted, or after PluginTokenLifetime.
// So while the agent is away, the plugin still lets pods outside the
// mesh start and refuses those of the mesh (no agent to redirect them),
// where with the agent's pod-bound token it refused every pod.
//
// When no token is at hand (the request failed: an apiserver before
// Kubernetes 1.31 refuses to bind a token to a Node, or the role is
// missing), the source gives fallback's kubeconfig and log says why,
// once until a request succeeds again (the agent asks every minute);
// the next call requests again. A token still valid is kept when its
// renewal fails.
func TokenRequestPluginKubeconfig(client kubernetes.Interface, rc *rest.Config, sa types.NamespacedName, node string, fallback func() ([]byte, error), log *slog.Logger) func() ([]byte, error) {
	ts := &pluginTokens{client: client, sa: sa, node: node, now: time.Now}
	failing := false
	return func() ([]byte, error) {
		token, err := ts.get()
		if err != nil {
			if !failing {
				log.Warn("request a token for the plugin; it gets the agent's own credentials meanwhile", logkey.Error, err)
			}
			failing = true
			return fallback()
		}
		if failing {
			log.Info("the plugin has a token of its own again")
		}
		failing = false
		return pluginKubeconfig(rc, token)
	}
}

// pluginTokens requests the plugin's tokens and keeps the current one.
type pluginTokens struct {
	client kubernetes.Interface
	sa     types.NamespacedName
	node   string
	now    func() time.Time

	token        string
	renew, until time.Time
}

// get returns a valid token: the current one until half its life has
// passed, then a new one (the current one while it is valid and the
// request fails).
func (p *pluginTokens) get() (string, error) {
	now := p.now()
	if p.token != "" && now.Before(p.renew) {
		return p.token, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	secs := int64(PluginTokenLifetime / time.Second)
	tr, err := p.client.CoreV1().ServiceAccounts(p.sa.Namespace).CreateToken(ctx, p.sa.Name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: &secs,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Node", Name: p.node},
		},
	}, metav1.CreateOptions{})
	if err == nil && tr.Status.Token == "" {
		err = errors.New("the apiserver gave no token")
	}
	if err != nil {
		err = fmt.Errorf("request token for service account %s bound to node %s: %w", p.sa, p.node, err)
		if p.token != "" && now.Before(p.until) {
			return p.token, nil
		}
		p.token = ""
		return "", err
	}
	// Half the life the apiserver gave (it may shorten or lengthen it),
	// measured on our clock from the request.
	until := tr.Status.ExpirationTimestamp.Time
	life := until.Sub(now)
	if life <= 0 {
		life = PluginTokenLifetime
	}
	p.token, p.renew, p.until = tr.Status.Token, now.Add(life/2), now.Add(life)
	return p.token, nil
}

// writePluginKubeconfig writes the plugin's kubeconfig to path if it
// differs from what is there.
func (a *Agent) writePluginKubeconfig(path string) error {
	kc, err := a.cfg.PluginKubeconfig()
	if err != nil {
		return err
	}
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, kc) {
		return nil
	}
	if err := install.WriteAtomic(path, kc, 0o600); err != nil {
		return err
	}
	a.log.Info("plugin kubeconfig written", "path", path)
	return nil
}

// keepPluginKubeconfig rewrites the plugin's kubeconfig whenever its
// source changes, until ctx ends.
func (a *Agent) keepPluginKubeconfig(ctx context.Context, path string) {
	t := time.NewTicker(PluginKubeconfigEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := a.writePluginKubeconfig(path); err != nil {
			a.log.Warn("renew plugin kubeconfig; the plugin keeps the last one", logkey.Error, err)
		}
	}
}
