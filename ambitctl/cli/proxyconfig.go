package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambitmesh/ambit/ambitctl/adminport"
	"github.com/ambitmesh/ambit/ambitctl/proxyconfig"
)

// pcOptions are the flags of the proxy-config commands.
type pcOptions struct {
	output string
	// filter is --name, --fqdn or --cluster, by command.
	filter string
}

func (c *ctl) proxyConfigCmd() *cobra.Command {
	pc := &cobra.Command{
		Use:     "proxy-config",
		Aliases: []string{"pc"},
		Short:   "Show a waypoint's configuration: listeners, routes, clusters, endpoints",
		Long: `Read a waypoint proxy's admin config dump (Envoy's /config_dump on its
port 15000, reached through the apiserver's pod port-forward) and
summarise it as istioctl proxy-config does, or print the section's Envoy
objects with -o json or -o yaml. The argument names the waypoint's pod,
or its Gateway (the first running pod of it): <name>[.<namespace>].`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	type section struct {
		use, short, filterFlag, filterHelp string
		run                                func(w io.Writer, d *proxyconfig.Dump, o pcOptions) error
	}
	sections := []section{
		{"listener", "Listeners and their filter chains: what matches each chain, where it sends traffic", "name", "only the listener of this name",
			func(w io.Writer, d *proxyconfig.Dump, o pcOptions) error {
				if o.output != outTable {
					return printProtos(w, o.output, filterProtos(d.Listeners, o.filter))
				}
				d.Listeners = filterProtos(d.Listeners, o.filter)
				tw := newTable(w)
				fmt.Fprintln(tw, "LISTENER\tCHAIN\tMATCH\tDESTINATION")
				for _, r := range d.ListenerSummary() {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Listener, r.Chain, r.Match, r.Destination)
				}
				return tw.Flush()
			}},
		{"route", "Routes (inline in the listeners' HTTP chains): domains, match, destination clusters and weights", "name", "only the route configuration of this name",
			func(w io.Writer, d *proxyconfig.Dump, o pcOptions) error {
				rcs := filterProtos(d.RouteConfigs(), o.filter)
				if o.output != outTable {
					return printProtos(w, o.output, rcs)
				}
				tw := newTable(w)
				fmt.Fprintln(tw, "NAME\tVHOST NAME\tDOMAINS\tMATCH\tROUTE\tDESTINATION")
				for _, r := range d.RouteSummary() {
					if o.filter == "" || r.Name == o.filter {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.VirtualHost, r.Domains, r.Match, r.Route, r.Destination)
					}
				}
				return tw.Flush()
			}},
		{"cluster", "Clusters: service, port, subset, direction and discovery type", "fqdn", "only the clusters of this service host name",
			func(w io.Writer, d *proxyconfig.Dump, o pcOptions) error {
				rows := d.ClusterSummary()
				if o.output != outTable {
					keep := map[string]bool{}
					for _, r := range rows {
						keep[r.Name] = o.filter == "" || r.ServiceFQDN == o.filter
					}
					var cs []proto.Message
					for _, c := range d.Clusters {
						if keep[c.GetName()] {
							cs = append(cs, c)
						}
					}
					return printProtos(w, o.output, cs)
				}
				tw := newTable(w)
				fmt.Fprintln(tw, "NAME\tSERVICE FQDN\tPORT\tSUBSET\tDIRECTION\tTYPE")
				for _, r := range rows {
					if o.filter == "" || r.ServiceFQDN == o.filter {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, orDash(r.ServiceFQDN), orDash(r.Port), orDash(r.Subset), orDash(r.Direction), r.Type)
					}
				}
				return tw.Flush()
			}},
		{"endpoint", "Endpoints of the clusters: address, health status, weight", "cluster", "only the endpoints of this cluster",
			func(w io.Writer, d *proxyconfig.Dump, o pcOptions) error {
				if o.output != outTable {
					var es []proto.Message
					for _, e := range d.Endpoints {
						if o.filter == "" || e.GetClusterName() == o.filter {
							es = append(es, e)
						}
					}
					return printProtos(w, o.output, es)
				}
				tw := newTable(w)
				fmt.Fprintln(tw, "ENDPOINT\tSTATUS\tWEIGHT\tCLUSTER")
				for _, r := range d.EndpointSummary() {
					if o.filter == "" || r.Cluster == o.filter {
						fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", r.Endpoint, r.Status, r.Weight, r.Cluster)
					}
				}
				return tw.Flush()
			}},
	}
	for _, s := range sections {
		var o pcOptions
		cmd := &cobra.Command{
			Use:     s.use + " <pod or waypoint>[.<namespace>]",
			Short:   s.short,
			Example: fmt.Sprintf("  ambitctl proxy-config %s waypoint -n bookinfo\n  ambitctl proxy-config %s bookinfo-reviews-7d9f8c.bookinfo -o yaml", s.use, s.use),
			Args:    cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				if err := checkOutput(o.output); err != nil {
					return err
				}
				raw, err := c.waypointDump(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				d, err := proxyconfig.Parse(raw)
				if err != nil {
					return err
				}
				return s.run(c.out(), d, o)
			},
		}
		addOutputFlag(cmd, &o.output)
		cmd.Flags().StringVar(&o.filter, s.filterFlag, "", s.filterHelp)
		pc.AddCommand(cmd)
	}
	return pc
}

// waypointDump fetches the config dump of the waypoint pod arg names:
// <pod>[.<namespace>], or <gateway>[.<namespace>] for the first running
// pod of that waypoint.
func (c *ctl) waypointDump(ctx context.Context, arg string) ([]byte, error) {
	t, err := c.waypointTarget(ctx, arg)
	if err != nil {
		return nil, err
	}
	d, err := c.dialer()
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return adminport.Get(ctx, d, t, "/config_dump")
}

func (c *ctl) waypointTarget(ctx context.Context, arg string) (adminport.Target, error) {
	name, ns, ok := strings.Cut(arg, ".")
	if !ok {
		var err error
		if ns, _, err = c.namespace(); err != nil {
			return adminport.Target{}, err
		}
	}
	_, cl, err := c.clients()
	if err != nil {
		return adminport.Target{}, err
	}
	pod, err := cl.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case err == nil:
	case apierrors.IsNotFound(err):
		sel := adminport.Waypoint.Selector + "=" + name
		pods, lerr := cl.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if lerr != nil {
			return adminport.Target{}, fmt.Errorf("list pods of waypoint %s/%s: %w", ns, name, lerr)
		}
		running := slices.DeleteFunc(pods.Items, func(p corev1.Pod) bool { return p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil })
		if len(running) == 0 {
			return adminport.Target{}, fmt.Errorf("find waypoint %s/%s: no pod of that name and no running pod with %s (ambitctl waypoint list -n %s shows the waypoints)", ns, name, sel, ns)
		}
		slices.SortFunc(running, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
		pod = &running[0]
	default:
		return adminport.Target{}, fmt.Errorf("get pod %s/%s: %w", ns, name, err)
	}
	return adminport.Target{Component: adminport.Waypoint, Node: pod.Spec.NodeName, Pod: pod.Name, Namespace: pod.Namespace}, nil
}

// named is a proto with a name (listeners, route configurations).
type named interface {
	proto.Message
	GetName() string
}

// filterProtos keeps the messages named name, all when name is empty.
func filterProtos[T named](ms []T, name string) []T {
	if name == "" {
		return ms
	}
	return slices.DeleteFunc(slices.Clone(ms), func(m T) bool { return m.GetName() != name })
}

// printProtos prints Envoy objects as a JSON array, with the proto field
// names as Envoy's admin API writes them, or as YAML.
func printProtos[T proto.Message](w io.Writer, format string, ms []T) error {
	out := make([]json.RawMessage, 0, len(ms))
	for _, m := range ms {
		b, err := (protojson.MarshalOptions{UseProtoNames: true}).Marshal(m)
		if err != nil {
			return fmt.Errorf("marshal output: %w", err)
		}
		out = append(out, b)
	}
	return printStructured(w, format, out)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
