package cli

import (
	"fmt"

	"github.com/spf13/cobra"
	istioclient "istio.io/client-go/pkg/clientset/versioned"

	"github.com/ambitmesh/ambit/ambitctl/analyze"
)

func (c *ctl) analyzeCmd() *cobra.Command {
	var all bool
	var output string
	cmd := &cobra.Command{
		Use:   "analyze",
		Short: "Find mesh configuration that does not do what it says: missing waypoints, policies and routes without one, selectors that select nothing",
		Long: `Read the namespace's (or, with -A, every namespace's) mesh configuration
from the apiserver and report, each with what to do:
  WaypointNotFound            an object bound (istio.io/use-waypoint) to a waypoint that does not exist: its traffic is refused
  NotAWaypoint                an object bound to a Gateway of another class
  L7PolicyWithoutWaypoint     an AuthorizationPolicy with HTTP rules attached by selector, where only ztunnel sees it
  TargetWithoutWaypoint       a policy targeting a Service that has no waypoint
  RouteParentWithoutWaypoint  an HTTPRoute whose parent Service has no waypoint
  SelectsNothing              a policy whose selector matches no pod
  ReferenceNotFound           a targetRef or parentRef to nothing
The command fails when an Error is found.`,
		Example: `  ambitctl analyze -n bookinfo
  ambitctl analyze -A -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			ns := ""
			if !all {
				var err error
				if ns, _, err = c.namespace(); err != nil {
					return err
				}
			}
			cfg, cl, err := c.clients()
			if err != nil {
				return err
			}
			ic, err := istioclient.NewForConfig(cfg)
			if err != nil {
				return fmt.Errorf("create istio client: %w", err)
			}
			gc, err := c.gatewayClient()
			if err != nil {
				return err
			}
			fs, err := analyze.Run(cmd.Context(), analyze.Clients{Kube: cl, Istio: ic, Gateway: gc}, ns, c.istioNamespace)
			if err != nil {
				return err
			}
			if output != outTable {
				if fs == nil {
					fs = []analyze.Finding{}
				}
				if err := printStructured(c.out(), output, fs); err != nil {
					return err
				}
			} else {
				where := "namespace " + ns
				if all {
					where = "all namespaces"
				}
				if len(fs) == 0 {
					fmt.Fprintf(c.out(), "No issues found in %s.\n", where)
				}
				for _, f := range fs {
					fmt.Fprintf(c.out(), "%s [%s] (%s) %s. Fix: %s.\n", f.Level, f.Code, f.Object, f.Message, f.Fix)
				}
			}
			for _, f := range fs {
				if f.Level == analyze.Error {
					return fmt.Errorf("analyze: errors found")
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "analyze every namespace")
	addOutputFlag(cmd, &output)
	return cmd
}
