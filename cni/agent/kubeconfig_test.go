package agent

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// TestInClusterPluginKubeconfig: the plugin's kubeconfig carries the
// agent's server, CA and current token itself, and the agent rewrites it
// when the kubelet rotates the token.
func TestInClusterPluginKubeconfig(t *testing.T) {
	dir := t.TempDir()
	tokenFile, caFile := filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
	write := func(path, data string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(tokenFile, "first-token\n")
	write(caFile, "the CA")
	rc := &rest.Config{Host: "https://10.96.0.1:443", BearerToken: "first-token", BearerTokenFile: tokenFile,
		TLSClientConfig: rest.TLSClientConfig{CAFile: caFile}}
	a := &Agent{cfg: Config{PluginKubeconfig: InClusterPluginKubeconfig(rc)}, log: slog.New(slog.DiscardHandler)}
	out := filepath.Join(dir, PluginKubeconfigName)

	check := func(wantToken string) {
		t.Helper()
		if err := a.writePluginKubeconfig(out); err != nil {
			t.Fatal(err)
		}
		cfg, err := clientcmd.LoadFromFile(out)
		if err != nil {
			t.Fatal(err)
		}
		ctx := cfg.Contexts[cfg.CurrentContext]
		if ctx == nil {
			t.Fatalf("kubeconfig: no current context %q", cfg.CurrentContext)
		}
		cl, user := cfg.Clusters[ctx.Cluster], cfg.AuthInfos[ctx.AuthInfo]
		if cl.Server != rc.Host || string(cl.CertificateAuthorityData) != "the CA" || cl.CertificateAuthority != "" {
			t.Errorf("cluster: got server %q, CA data %q, CA file %q; want %s, the CA itself, no file", cl.Server, cl.CertificateAuthorityData, cl.CertificateAuthority, rc.Host)
		}
		if user.Token != wantToken || user.TokenFile != "" {
			t.Errorf("user: got token %q, token file %q; want %q, no file", user.Token, user.TokenFile, wantToken)
		}
		if st, err := os.Stat(out); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("kubeconfig mode: got %v (%v), want 0600", st.Mode(), err)
		}
	}
	check("first-token")
	write(tokenFile, "rotated-token\n")
	check("rotated-token")

	// Without a token there is nothing to give the plugin; the old file
	// stays.
	write(tokenFile, "")
	rc.BearerToken = ""
	if err := a.writePluginKubeconfig(out); err == nil {
		t.Error("empty token: got no error, want one")
	}
	check2, _ := clientcmd.LoadFromFile(out)
	if got := check2.AuthInfos["ambit-cni"].Token; got != "rotated-token" {
		t.Errorf("after a failed renewal: got token %q, want the last good one", got)
	}
}

func TestPluginKubeconfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kc")
	if _, err := PluginKubeconfigFile(path)(); err == nil {
		t.Error("missing file: got no error, want one")
	}
	if err := os.WriteFile(path, []byte("kc"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := PluginKubeconfigFile(path)(); err != nil || string(got) != "kc" {
		t.Errorf("got %q, %v; want the file", got, err)
	}
}
