package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambitmesh/ambit/ambitctl/waypoint"
	"github.com/ambitmesh/ambit/istiod/ambient"
)

// waypointTimeout is how long --wait waits by default, as istioctl.
const waypointTimeout = 90 * time.Second

func (c *ctl) waypointClient() (*waypoint.Client, error) {
	_, cl, err := c.clients()
	if err != nil {
		return nil, err
	}
	gc, err := c.gatewayClient()
	if err != nil {
		return nil, err
	}
	return &waypoint.Client{Kube: cl, Gateway: gc, Out: c.out()}, nil
}

func (c *ctl) waypointCmd() *cobra.Command {
	var spec waypoint.Spec
	wp := &cobra.Command{
		Use:   "waypoint",
		Short: "Manage waypoints: generate, apply, list, status, delete",
		Long: `Manage waypoints, the L7 proxies of the ambient mesh, as istioctl waypoint
does: a Gateway of class istio-waypoint with an HBONE listener on 15008.
Ambit adds per-service-account waypoints (--service-account): the Gateway
is annotated istio.io/for-service-account and the ServiceAccount labelled
istio.io/use-waypoint, so that its workloads' traffic goes through it.`,
		Example: `  # A waypoint for the namespace, used by all of it, ready when the command returns
  ambitctl waypoint apply -n shop --enroll-namespace --wait

  # A waypoint for the workloads of one service account
  ambitctl waypoint apply -n shop --service-account reviews

  # The Gateway as YAML, to review or commit
  ambitctl waypoint generate -n shop --for workload`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	wp.PersistentFlags().StringVar(&spec.Name, "name", "", `the waypoint's name ("waypoint", or the service account's name and "-waypoint" with --service-account)`)
	specFlags := func(cmd *cobra.Command) {
		cmd.Flags().StringVar(&spec.For, "for", "", "traffic the waypoint takes: "+strings.Join(waypoint.TrafficTypes, ", ")+" (istiod's default, service, when empty)")
		_ = cmd.RegisterFlagCompletionFunc("for", cobra.FixedCompletions(waypoint.TrafficTypes, cobra.ShellCompDirectiveNoFileComp))
		cmd.Flags().StringVar(&spec.ServiceAccount, "service-account", "", "make it the waypoint of this service account's workloads (Ambit's per-account waypoint)")
	}
	fillSpec := func() error {
		ns, _, err := c.namespace()
		spec.Namespace = ns
		return err
	}

	var genOut string
	generate := &cobra.Command{
		Use:   "generate",
		Short: "Print a waypoint's Gateway as YAML (or JSON) without applying it",
		Example: `  ambitctl waypoint generate -n shop
  ambitctl waypoint generate -n shop --service-account reviews`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if genOut == "" {
				genOut = outYAML
			}
			if err := checkOutput(genOut); err != nil {
				return err
			}
			if err := fillSpec(); err != nil {
				return err
			}
			gw, err := spec.Gateway()
			if err != nil {
				return fmt.Errorf("generate waypoint: %w", err)
			}
			return printGateway(c, genOut, gw)
		},
	}
	specFlags(generate)
	generate.Flags().StringVarP(&genOut, "output", "o", outYAML, "output format: yaml or json")

	var ao waypoint.ApplyOptions
	apply := &cobra.Command{
		Use:   "apply",
		Short: "Create or update a waypoint, and bind the namespace or service account to it",
		Example: `  ambitctl waypoint apply -n shop --wait
  ambitctl waypoint apply -n shop --enroll-namespace --overwrite
  ambitctl waypoint apply -n shop --service-account reviews --for workload`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := fillSpec(); err != nil {
				return err
			}
			if _, err := spec.Gateway(); err != nil {
				return fmt.Errorf("apply waypoint: %w", err)
			}
			wc, err := c.waypointClient()
			if err != nil {
				return err
			}
			return wc.Apply(cmd.Context(), spec, ao)
		},
	}
	specFlags(apply)
	apply.Flags().BoolVar(&ao.EnrollNamespace, "enroll-namespace", false, "label the namespace istio.io/use-waypoint=<name>: all its traffic goes through the waypoint")
	apply.Flags().BoolVar(&ao.Overwrite, "overwrite", false, "replace the namespace's or service account's binding to another waypoint")
	apply.Flags().BoolVarP(&ao.Wait, "wait", "w", false, "wait until the waypoint's Gateway is Programmed")
	apply.Flags().DurationVar(&ao.Timeout, "timeout", waypointTimeout, "how long --wait waits")

	var all bool
	var listOut string
	list := &cobra.Command{
		Use:   "list",
		Short: "List waypoints",
		Example: `  ambitctl waypoint list -n shop
  ambitctl waypoint list -A`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(listOut); err != nil {
				return err
			}
			ns := ""
			if !all {
				if err := fillSpec(); err != nil {
					return err
				}
				ns = spec.Namespace
			}
			wc, err := c.waypointClient()
			if err != nil {
				return err
			}
			gws, err := wc.List(cmd.Context(), ns)
			if err != nil {
				return err
			}
			if listOut != outTable {
				return printStructured(c.out(), listOut, gatewayList(gws))
			}
			if len(gws) == 0 {
				fmt.Fprintln(c.out(), "No waypoints found.")
				return nil
			}
			tw := newTable(c.out())
			head := "NAME\tTRAFFIC TYPE\tSERVICE ACCOUNT\tPROGRAMMED"
			if all {
				head = "NAMESPACE\t" + head
			}
			fmt.Fprintln(tw, head)
			for _, gw := range gws {
				if all {
					fmt.Fprintf(tw, "%s\t", gw.Namespace)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", gw.Name, waypoint.TrafficType(&gw), orNone(gw.Annotations[ambient.AnnotationForServiceAccount]), waypoint.Programmed(&gw))
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVarP(&all, "all-namespaces", "A", false, "list the waypoints of every namespace")
	addOutputFlag(list, &listOut)

	var statusOut string
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the conditions of a namespace's waypoints (or the one --name names)",
		Example: `  ambitctl waypoint status -n shop
  ambitctl waypoint status -n shop --name reviews`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(statusOut); err != nil {
				return err
			}
			if err := fillSpec(); err != nil {
				return err
			}
			wc, err := c.waypointClient()
			if err != nil {
				return err
			}
			gws, err := wc.List(cmd.Context(), spec.Namespace)
			if err != nil {
				return err
			}
			if spec.Name != "" {
				var only []gatewayv1.Gateway
				for _, gw := range gws {
					if gw.Name == spec.Name {
						only = append(only, gw)
					}
				}
				if len(only) == 0 {
					return fmt.Errorf("waypoint status: no waypoint %s/%s", spec.Namespace, spec.Name)
				}
				gws = only
			}
			if statusOut != outTable {
				return printStructured(c.out(), statusOut, gatewayList(gws))
			}
			if len(gws) == 0 {
				fmt.Fprintln(c.out(), "No waypoints found.")
				return nil
			}
			tw := newTable(c.out())
			fmt.Fprintln(tw, "NAME\tSTATUS\tTYPE\tREASON\tMESSAGE")
			for _, gw := range gws {
				if len(gw.Status.Conditions) == 0 {
					fmt.Fprintf(tw, "%s\t%s\t%s\t\tno conditions yet\n", gw.Name, metav1.ConditionUnknown, gatewayv1.GatewayConditionProgrammed)
				}
				for _, cond := range gw.Status.Conditions {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", gw.Name, cond.Status, cond.Type, cond.Reason, cond.Message)
				}
			}
			return tw.Flush()
		},
	}
	addOutputFlag(status, &statusOut)

	var deleteAll bool
	del := &cobra.Command{
		Use:   "delete [NAME...]",
		Short: "Delete waypoints by name, or all of a namespace's",
		Example: `  ambitctl waypoint delete waypoint -n shop
  ambitctl waypoint delete --all -n shop`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if deleteAll == (len(args) > 0) {
				return usageErr("name waypoints or give --all, not both or neither")
			}
			if err := fillSpec(); err != nil {
				return err
			}
			wc, err := c.waypointClient()
			if err != nil {
				return err
			}
			return wc.Delete(cmd.Context(), spec.Namespace, args, deleteAll)
		},
	}
	del.Flags().BoolVar(&deleteAll, "all", false, "delete every waypoint of the namespace")

	wp.AddCommand(generate, apply, list, status, del)
	return wp
}

// gatewayList is what -o prints for several Gateways: a List, as kubectl.
func gatewayList(gws []gatewayv1.Gateway) any {
	l := gatewayv1.GatewayList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "List"}, Items: gws}
	for i := range l.Items {
		l.Items[i].APIVersion, l.Items[i].Kind = gatewayv1.GroupVersion.String(), "Gateway"
		l.Items[i].ManagedFields = nil
	}
	return l
}

// printGateway prints a Gateway made here, without the empty fields a
// new object has.
func printGateway(c *ctl, format string, gw *gatewayv1.Gateway) error {
	b, err := yaml.Marshal(gw)
	if err != nil {
		return fmt.Errorf("marshal gateway: %w", err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("marshal gateway: %w", err)
	}
	delete(m, "status")
	if md, ok := m["metadata"].(map[string]any); ok {
		delete(md, "creationTimestamp")
	}
	return printStructured(c.out(), format, m)
}
