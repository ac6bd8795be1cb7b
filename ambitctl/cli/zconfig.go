package cli

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"slices"

	"strings"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambitmesh/ambit/ambitctl/adminport"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/ztunnel/admin"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// ztunnelMetrics is ztunnel's metrics port (15020), where the open
// connections are counted.
var ztunnelMetrics = adminport.Component{Name: "ztunnel", Selector: adminport.Ztunnel.Selector, Port: 15020, PerNode: true}

// zcOptions are the flags every ztunnel-config command shares.
type zcOptions struct {
	node   string
	output string
}

func (c *ctl) ztunnelConfigCmd() *cobra.Command {
	zc := &cobra.Command{
		Use:     "ztunnel-config",
		Aliases: []string{"zc"},
		Short:   "Show the state of a node's ztunnel: workloads, services, policies, certificates, connections, log level",
		Long: `Read a ztunnel's admin API (its config dump on port 15000) and show it as
tables, or as ztunnel wrote it with -o json or -o yaml. The ztunnel is the
one on --node, or on the node of the pod named as the argument
(<pod>[.<namespace>]; a ztunnel pod names its own node), or the first one
found.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	type section struct {
		use, short string
		print      func(w io.Writer, d *admin.Dump, ns string) error
	}
	sections := []section{
		{"workload", "Workloads ztunnel knows: address, node, waypoint, tunnel protocol", printWorkloads},
		{"service", "Services ztunnel knows: VIPs, waypoint, healthy endpoints", printServices},
		{"policy", "Authorization policies ztunnel enforces", printPolicies},
		{"certificate", "Certificates ztunnel holds for its workloads' identities", printCertificates},
		{"all", "Everything of the config dump: workloads, services, policies, certificates", printAll},
	}
	for _, s := range sections {
		var o zcOptions
		cmd := &cobra.Command{
			Use:     s.use + " [<pod>[.<namespace>]]",
			Short:   s.short,
			Example: fmt.Sprintf("  ambitctl ztunnel-config %s --node node1\n  ambitctl ztunnel-config %s productpage-v1-5f7c8.bookinfo -o json", s.use, s.use),
			Args:    cobra.MaximumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				if err := checkOutput(o.output); err != nil {
					return err
				}
				d, t, err := c.ztunnel(cmd.Context(), o.node, args, adminport.Ztunnel)
				if err != nil {
					return err
				}
				defer d.Close()
				raw, err := adminport.Get(cmd.Context(), d, t, "/config_dump")
				if err != nil {
					return err
				}
				var dump admin.Dump
				if err := json.Unmarshal(raw, &dump); err != nil {
					return fmt.Errorf("decode config dump of %s: %w", t, err)
				}
				ns, explicit, err := c.namespace()
				if err != nil {
					return err
				}
				if !explicit {
					ns = ""
				}
				if o.output != outTable {
					return printStructured(c.out(), o.output, dumpSection(&dump, s.use, ns))
				}
				return s.print(c.out(), &dump, ns)
			},
		}
		addZCFlags(cmd, &o)
		zc.AddCommand(cmd)
	}
	zc.AddCommand(c.connectionsCmd(), c.logCmd())
	return zc
}

func addZCFlags(cmd *cobra.Command, o *zcOptions) {
	cmd.Flags().StringVar(&o.node, "node", "", "the ztunnel of this node")
	addOutputFlag(cmd, &o.output)
}

// ztunnel finds the ztunnel to ask: on node, or on the node of the pod
// args name, or the first.
func (c *ctl) ztunnel(ctx context.Context, node string, args []string, comp adminport.Component) (adminport.Dialer, adminport.Target, error) {
	if len(args) == 1 {
		if node != "" {
			return nil, adminport.Target{}, usageErr("name a pod or --node, not both")
		}
		name, ns, ok := strings.Cut(args[0], ".")
		if !ok {
			var err error
			if ns, _, err = c.namespace(); err != nil {
				return nil, adminport.Target{}, err
			}
		}
		_, cl, err := c.clients()
		if err != nil {
			return nil, adminport.Target{}, err
		}
		pod, err := cl.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, adminport.Target{}, fmt.Errorf("get pod %s/%s: %w", ns, name, err)
		}
		if pod.Spec.NodeName == "" {
			return nil, adminport.Target{}, fmt.Errorf("pod %s/%s is on no node yet", ns, name)
		}
		node = pod.Spec.NodeName
	}
	d, err := c.dialer()
	if err != nil {
		return nil, adminport.Target{}, err
	}
	targets, err := d.Targets(ctx, comp, node)
	if err != nil {
		d.Close()
		return nil, adminport.Target{}, err
	}
	if len(targets) == 0 {
		d.Close()
		where := "in " + c.istioNamespace
		if node != "" {
			where = "on node " + node
		}
		return nil, adminport.Target{}, fmt.Errorf("find ztunnel: none running %s (is Ambit installed? -i names its namespace)", where)
	}
	return d, targets[0], nil
}

// dumpSection is the part of the dump that -o prints for a section,
// filtered to namespace ns when not empty.
func dumpSection(d *admin.Dump, section, ns string) any {
	filterDump(d, ns)
	switch section {
	case "workload":
		return d.Workloads
	case "service":
		return d.Services
	case "policy":
		return d.Policies
	case "certificate":
		return d.Certificates
	}
	return d
}

func filterDump(d *admin.Dump, ns string) {
	if ns == "" {
		return
	}
	d.Workloads = slices.DeleteFunc(d.Workloads, func(w *config.Workload) bool { return w.Namespace != ns })
	d.Services = slices.DeleteFunc(d.Services, func(s *config.Service) bool { return s.Namespace != ns })
	d.Policies = slices.DeleteFunc(d.Policies, func(p *config.Authorization) bool { return p.Namespace != ns })
}

// sortedByName is a copy of objs sorted by namespace, then name.
func sortedByName[T any](objs []T, name func(T) (namespace, name string)) []T {
	out := slices.Clone(objs)
	slices.SortFunc(out, func(a, b T) int {
		ans, an := name(a)
		bns, bn := name(b)
		return cmp.Or(cmp.Compare(ans, bns), cmp.Compare(an, bn))
	})
	return out
}

// waypointOrNone names a workload's or service's waypoint, None when it
// has none.
func waypointOrNone(gw *config.GatewayAddress) string {
	if gw == nil {
		return "None"
	}
	return orNone(gw.String())
}

func printWorkloads(w io.Writer, d *admin.Dump, ns string) error {
	filterDump(d, ns)
	ws := sortedByName(d.Workloads, func(w *config.Workload) (string, string) { return w.Namespace, w.Name })
	tw := newTable(w)
	fmt.Fprintln(tw, "NAMESPACE\tPOD NAME\tADDRESS\tNODE\tWAYPOINT\tPROTOCOL")
	for _, wl := range ws {
		var addrs []string
		for _, a := range wl.Addresses {
			addrs = append(addrs, a.String())
		}
		proto := string(wl.TunnelProtocol)
		if proto == "" {
			proto = string(config.TunnelNone)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", wl.Namespace, wl.Name, strings.Join(addrs, ","), wl.Node, waypointOrNone(wl.Waypoint), proto)
	}
	return tw.Flush()
}

func printServices(w io.Writer, d *admin.Dump, ns string) error {
	filterDump(d, ns)
	total, healthy := map[string]int{}, map[string]int{}
	for _, wl := range d.Workloads {
		for key := range wl.Services {
			total[key]++
			if wl.Healthy() {
				healthy[key]++
			}
		}
	}
	ss := sortedByName(d.Services, func(s *config.Service) (string, string) { return s.Namespace, s.Name })
	tw := newTable(w)
	fmt.Fprintln(tw, "NAMESPACE\tSERVICE NAME\tSERVICE VIP\tWAYPOINT\tENDPOINTS")
	for _, s := range ss {
		var vips []string
		for _, a := range s.Addresses {
			vips = append(vips, a.Address.String())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\n", s.Namespace, s.Name, strings.Join(vips, ","), waypointOrNone(s.Waypoint), healthy[s.Key()], total[s.Key()])
	}
	return tw.Flush()
}

func printPolicies(w io.Writer, d *admin.Dump, ns string) error {
	filterDump(d, ns)
	ps := sortedByName(d.Policies, func(p *config.Authorization) (string, string) { return p.Namespace, p.Name })
	tw := newTable(w)
	fmt.Fprintln(tw, "NAMESPACE\tPOLICY NAME\tACTION\tSCOPE")
	for _, p := range ps {
		action := string(p.Action)
		if p.DryRun {
			action += " (dry run)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Namespace, p.Name, action, p.Scope)
	}
	return tw.Flush()
}

func printCertificates(w io.Writer, d *admin.Dump, _ string) error {
	cs := slices.Clone(d.Certificates)
	slices.SortFunc(cs, func(a, b identity.CertInfo) int { return cmp.Compare(a.Identity, b.Identity) })
	tw := newTable(w)
	fmt.Fprintln(tw, "IDENTITY\tSTATE\tSERIAL NUMBER\tNOT AFTER\tNOT BEFORE")
	for _, c := range cs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Identity, c.State, orNone(c.Serial), timeOrNone(c.NotAfter), timeOrNone(c.NotBefore))
	}
	return tw.Flush()
}

func timeOrNone(t time.Time) string {
	if t.IsZero() {
		return "None"
	}
	return t.UTC().Format(time.RFC3339)
}

func printAll(w io.Writer, d *admin.Dump, ns string) error {
	for i, p := range []func(io.Writer, *admin.Dump, string) error{printWorkloads, printServices, printPolicies, printCertificates} {
		if i > 0 {
			fmt.Fprintln(w)
		}
		if err := p(w, d, ns); err != nil {
			return err
		}
	}
	return nil
}

// connection is one row of ztunnel-config connections: the connections
// one ztunnel reported between a source and a destination workload.
type connection struct {
	Reporter    string `json:"reporter"`
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Service     string `json:"service,omitempty"`
	Opened      int64  `json:"opened"`
	Closed      int64  `json:"closed"`
	Open        int64  `json:"open"`
}

func (c *ctl) connectionsCmd() *cobra.Command {
	var o zcOptions
	cmd := &cobra.Command{
		Use:   "connections [<pod>[.<namespace>]]",
		Short: "Connections a ztunnel carried, open and closed, per source and destination workload",
		Long: `Count the connections a ztunnel reported, from its Istio metrics
(istio_tcp_connections_opened_total and istio_tcp_connections_closed_total
on port 15020), per reporter, source and destination workload and
destination service; OPEN is opened minus closed.`,
		Example: "  ambitctl ztunnel-config connections --node node1",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(o.output); err != nil {
				return err
			}
			d, t, err := c.ztunnel(cmd.Context(), o.node, args, ztunnelMetrics)
			if err != nil {
				return err
			}
			defer d.Close()
			body, err := adminport.Get(cmd.Context(), d, t, "/metrics")
			if err != nil {
				return err
			}
			conns, err := parseConnections(body)
			if err != nil {
				return fmt.Errorf("read metrics of %s: %w", t, err)
			}
			ns, explicit, err := c.namespace()
			if err != nil {
				return err
			}
			if explicit {
				conns = slices.DeleteFunc(conns, func(c connection) bool {
					return !strings.HasPrefix(c.Source, ns+"/") && !strings.HasPrefix(c.Destination, ns+"/")
				})
			}
			if o.output != outTable {
				return printStructured(c.out(), o.output, conns)
			}
			tw := newTable(c.out())
			fmt.Fprintln(tw, "REPORTER\tSOURCE\tDESTINATION\tSERVICE\tOPENED\tCLOSED\tOPEN")
			for _, cn := range conns {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\n", cn.Reporter, cn.Source, cn.Destination, orNone(cn.Service), cn.Opened, cn.Closed, cn.Open)
			}
			return tw.Flush()
		},
	}
	addZCFlags(cmd, &o)
	return cmd
}

// parseConnections sums ztunnel's TCP connection counters per reporter,
// source, destination and service.
func parseConnections(body []byte) ([]connection, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	rows := map[string]*connection{}
	add := func(name string, opened bool) {
		f := fams[name]
		if f == nil {
			return
		}
		for _, m := range f.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			r := connection{
				Reporter:    l["reporter"],
				Source:      l["source_workload_namespace"] + "/" + l["source_workload"],
				Destination: l["destination_workload_namespace"] + "/" + l["destination_workload"],
				Service:     l["destination_service"],
			}
			if r.Service == "unknown" {
				r.Service = ""
			}
			key := strings.Join([]string{r.Reporter, r.Source, r.Destination, r.Service}, "|")
			row := rows[key]
			if row == nil {
				row = &r
				rows[key] = row
			}
			v := int64(m.GetCounter().GetValue())
			if opened {
				row.Opened += v
			} else {
				row.Closed += v
			}
		}
	}
	add("istio_tcp_connections_opened_total", true)
	add("istio_tcp_connections_closed_total", false)
	out := make([]connection, 0, len(rows))
	for _, r := range rows {
		r.Open = r.Opened - r.Closed
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b connection) int {
		return cmp.Or(cmp.Compare(a.Reporter, b.Reporter), cmp.Compare(a.Source, b.Source),
			cmp.Compare(a.Destination, b.Destination), cmp.Compare(a.Service, b.Service))
	})
	return out, nil
}

func (c *ctl) logCmd() *cobra.Command {
	var o zcOptions
	var level string
	cmd := &cobra.Command{
		Use:   "log [<pod>[.<namespace>]]",
		Short: "Show or set a ztunnel's log level",
		Example: `  ambitctl ztunnel-config log --node node1
  ambitctl ztunnel-config log --node node1 --level debug`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch level {
			case "", "debug", "info", "warn", "error":
			default:
				return usageErr("level %q: want debug, info, warn or error", level)
			}
			d, t, err := c.ztunnel(cmd.Context(), o.node, args, adminport.Ztunnel)
			if err != nil {
				return err
			}
			defer d.Close()
			var body []byte
			if level == "" {
				body, err = adminport.Get(cmd.Context(), d, t, "/logging")
			} else {
				body, err = adminport.Post(cmd.Context(), d, t, "/logging?level="+url.QueryEscape(level))
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(c.out(), "%s: %s", t, body)
			return nil
		},
	}
	cmd.Flags().StringVar(&o.node, "node", "", "the ztunnel of this node")
	cmd.Flags().StringVar(&level, "level", "", "set the level: debug, info, warn or error")
	_ = cmd.RegisterFlagCompletionFunc("level", cobra.FixedCompletions([]string{"debug", "info", "warn", "error"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}
