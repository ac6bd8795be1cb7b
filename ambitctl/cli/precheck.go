package cli

import (
	"fmt"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ambitmesh/ambit/ambitctl/precheck"
	"github.com/ambitmesh/ambit/bpf/redirect"
)

func (c *ctl) precheckCmd() *cobra.Command {
	var node precheck.Node
	var cluster bool
	var output string
	cmd := &cobra.Command{
		Use:   "precheck",
		Short: "Check that this node and the cluster can run Ambit",
		Long: `Check, on the node it runs on, the kernel (version, BTF, TCX), the CNI
configuration Ambit's plugin will chain into, and another mesh's plugin in
it; and, in the cluster (unless --cluster=false), another mesh's DaemonSets
and Cilium settings that would undo Ambit's chaining. Every check prints
PASS, WARN or FAIL and what to do; the command fails when a check fails.
Run it as root on each node for the TCX probe.`,
		Example: `  sudo ambitctl x precheck
  ambitctl x precheck --cluster=false --cni-conf-dir /etc/cni/net.d -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if node.KernelRelease == "" {
				var u unix.Utsname
				if err := unix.Uname(&u); err != nil {
					return fmt.Errorf("read kernel release: %w", err)
				}
				node.KernelRelease = unix.ByteSliceToString(u.Release[:])
			}
			node.ProbeTCX = redirect.ProbeTCX
			results := precheck.CheckNode(node)
			if cluster {
				_, cl, err := c.clients()
				if err != nil {
					return err
				}
				rs, err := precheck.CheckCluster(cmd.Context(), precheck.Cluster{Client: cl, IstioNamespace: c.istioNamespace})
				if err != nil {
					return err
				}
				results = append(results, rs...)
			}
			if output != outTable {
				if err := printStructured(c.out(), output, results); err != nil {
					return err
				}
			} else {
				tw := newTable(c.out())
				for _, r := range results {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Status, r.Check, r.Detail)
					if r.Fix != "" {
						fmt.Fprintf(tw, "\t\tfix: %s\n", r.Fix)
					}
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			if precheck.Failed(results) {
				return fmt.Errorf("precheck: a check failed")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&node.CNIConfDir, "cni-conf-dir", "/etc/cni/net.d", "the node's CNI configuration directory")
	cmd.Flags().StringVar(&node.BTFPath, "btf", "/sys/kernel/btf/vmlinux", "the kernel's BTF")
	cmd.Flags().StringVar(&node.KernelRelease, "kernel-release", "", "check this kernel release instead of the running one's")
	_ = cmd.Flags().MarkHidden("kernel-release")
	cmd.Flags().BoolVar(&cluster, "cluster", true, "also check the cluster (another mesh's DaemonSets, Cilium's settings)")
	addOutputFlag(cmd, &output)
	return cmd
}
