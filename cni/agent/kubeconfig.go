package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

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
func InClusterPluginKubeconfig(rc *rest.Config) func() ([]byte, error) {
	return func() ([]byte, error) {
		ca := rc.TLSClientConfig.CAData
		if len(ca) == 0 && rc.TLSClientConfig.CAFile != "" {
			var err error
			if ca, err = os.ReadFile(rc.TLSClientConfig.CAFile); err != nil {
				return nil, fmt.Errorf("read apiserver CA for the plugin: %w", err)
			}
		}
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
