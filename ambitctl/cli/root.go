// Package cli is ambitctl's command tree (cobra), with kubectl's
// conventions: the kubeconfig flags of k8s.io/cli-runtime
// (--kubeconfig, --context, -n/--namespace, ...), -A for all namespaces,
// -o yaml|json for machine-readable output, tables for people, and
// completion scripts for bash and zsh. The verbs are istioctl's:
// version, ztunnel-config, proxy-config, waypoint, analyze and x precheck.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambitmesh/ambit/ambitctl/adminport"
)

// DefaultIstioNamespace is where the chart installs istiod, ztunnel and
// the node agent.
const DefaultIstioNamespace = "istio-system"

// ctl holds the global flags and what they lead to.
type ctl struct {
	streams        genericiooptions.IOStreams
	kube           *genericclioptions.ConfigFlags
	istioNamespace string
	labPrefix      string

	restConfig *rest.Config
	client     kubernetes.Interface
	// dial, when set, is the way to admin ports (tests).
	dial adminport.Dialer
}

// New returns ambitctl's root command writing to streams.
func New(streams genericiooptions.IOStreams) *cobra.Command {
	return newRoot(&ctl{streams: streams, kube: genericclioptions.NewConfigFlags(true)})
}

func newRoot(c *ctl) *cobra.Command {
	root := &cobra.Command{
		Use:   "ambitctl",
		Short: "Ambit's command line: waypoints, ztunnel's and waypoints' state, versions and node checks",
		Long: `ambitctl manages and inspects Ambit, a sidecarless (ambient) service mesh
with Istio's API. It reaches the cluster as kubectl does (--kubeconfig,
--context, -n), and the components' local admin ports through the
apiserver's pod port-forward.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cmd.Help()
		},
	}
	root.SetIn(c.streams.In)
	root.SetOut(c.streams.Out)
	root.SetErr(c.streams.ErrOut)
	c.kube.AddFlags(root.PersistentFlags())
	root.PersistentFlags().StringVarP(&c.istioNamespace, "istio-namespace", "i", DefaultIstioNamespace,
		"namespace of Ambit's istiod, ztunnel and node agent")
	root.PersistentFlags().StringVar(&c.labPrefix, "lab-netns-prefix", "",
		"reach components through the lab's network namespaces <prefix><node> instead of pod port-forward (Ambit's test lab; needs root)")
	_ = root.PersistentFlags().MarkHidden("lab-netns-prefix")

	root.AddCommand(
		c.versionCmd(),
		c.ztunnelConfigCmd(),
		c.waypointCmd(),
		c.analyzeCmd(),
		c.proxyConfigCmd(),
		c.experimentalCmd(),
		completionCmd(),
	)
	return root
}

// Main runs ambitctl with args and returns the process's exit code.
func Main(ctx context.Context, streams genericiooptions.IOStreams, args []string) int {
	root := New(streams)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(streams.ErrOut, "Error: %v\n", err)
		return 1
	}
	return 0
}

// clients builds the Kubernetes client from the kubeconfig flags, once.
func (c *ctl) clients() (*rest.Config, kubernetes.Interface, error) {
	if c.client != nil {
		return c.restConfig, c.client, nil
	}
	cfg, err := c.kube.ToRESTConfig()
	if err != nil {
		return nil, nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	cl, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("create kubernetes client: %w", err)
	}
	c.restConfig, c.client = cfg, cl
	return cfg, cl, nil
}

func (c *ctl) gatewayClient() (gatewayclient.Interface, error) {
	cfg, _, err := c.clients()
	if err != nil {
		return nil, err
	}
	gc, err := gatewayclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create gateway api client: %w", err)
	}
	return gc, nil
}

// namespace is -n, or the kubeconfig context's namespace, or "default";
// explicit says whether -n was given.
func (c *ctl) namespace() (ns string, explicit bool, err error) {
	ns, explicit, err = c.kube.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return "", false, fmt.Errorf("read namespace from kubeconfig: %w", err)
	}
	if c.kube.Namespace != nil && *c.kube.Namespace != "" {
		explicit = true
	}
	return ns, explicit, nil
}

// dialer is the way to the components' local ports: the lab's network
// namespaces when --lab-netns-prefix is set, pod port-forward otherwise.
func (c *ctl) dialer() (adminport.Dialer, error) {
	if c.dial != nil {
		return c.dial, nil
	}
	cfg, cl, err := c.clients()
	if err != nil {
		return nil, err
	}
	if c.labPrefix != "" {
		return &adminport.Netns{Prefix: c.labPrefix, Client: cl}, nil
	}
	return &adminport.PortForward{Config: cfg, Client: cl, Namespace: c.istioNamespace}, nil
}

func (c *ctl) out() io.Writer { return c.streams.Out }

// errUsage marks errors in how a command was called.
var errUsage = errors.New("usage")

func usageErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// experimentalCmd is "x": commands whose interface may still change, as
// istioctl's experimental group.
func (c *ctl) experimentalCmd() *cobra.Command {
	x := &cobra.Command{
		Use:     "x",
		Aliases: []string{"experimental"},
		Short:   "Experimental commands that may change",
		Args:    cobra.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	x.AddCommand(c.precheckCmd())
	return x
}

func completionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "completion bash|zsh",
		Short: "Print a shell completion script",
		Long: `Print a completion script for bash or zsh. Load it with, for bash:

  source <(ambitctl completion bash)

and for zsh:

  source <(ambitctl completion zsh)`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"bash", "zsh"},
		RunE: func(cmd *cobra.Command, args []string) error {
			switch args[0] {
			case "bash":
				return cmd.Root().GenBashCompletionV2(cmd.OutOrStdout(), true)
			case "zsh":
				return cmd.Root().GenZshCompletion(cmd.OutOrStdout())
			}
			return usageErr("completion %q: want bash or zsh", args[0])
		},
	}
}
