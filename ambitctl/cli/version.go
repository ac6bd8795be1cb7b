package cli

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ambitmesh/ambit/ambitctl/adminport"
	"github.com/ambitmesh/ambit/internal/version"
)

// componentVersion is one line of ambitctl version.
type componentVersion struct {
	Component string `json:"component"`
	Node      string `json:"node,omitempty"`
	Pod       string `json:"pod,omitempty"`
	version.Info
	Error string `json:"error,omitempty"`
}

func (c *ctl) versionCmd() *cobra.Command {
	var remote bool
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the versions of ambitctl, istiod, and each node's ztunnel and node agent",
		Long: `Print ambitctl's own version and, with --remote (the default), the version
istiod and each node's ztunnel and node agent report on GET /version of
their local ports.`,
		Example: `  ambitctl version
  ambitctl version --remote=false
  ambitctl version -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			out := []componentVersion{{Component: "ambitctl", Info: version.Get()}}
			failed := 0
			if remote {
				d, err := c.dialer()
				if err != nil {
					return err
				}
				defer d.Close()
				for _, comp := range []adminport.Component{adminport.Istiod, adminport.Ztunnel, adminport.Agent} {
					targets, err := d.Targets(cmd.Context(), comp, "")
					if err != nil {
						return err
					}
					if len(targets) == 0 {
						out = append(out, componentVersion{Component: comp.Name, Error: "none running in " + c.istioNamespace})
						failed++
						continue
					}
					for _, t := range targets {
						v := componentVersion{Component: comp.Name, Node: t.Node, Pod: t.Pod}
						body, err := adminport.Get(cmd.Context(), d, t, version.Path)
						if err == nil {
							err = json.Unmarshal(body, &v.Info)
						}
						if err != nil {
							v.Error = err.Error()
							failed++
						}
						out = append(out, v)
					}
				}
			}
			if output != outTable {
				if err := printStructured(c.out(), output, out); err != nil {
					return err
				}
			} else {
				tw := newTable(c.out())
				fmt.Fprintln(tw, "COMPONENT\tNODE\tVERSION\tISTIO API\tGO")
				for _, v := range out {
					node := v.Node
					if node == "" {
						node = "-"
					}
					if v.Error != "" {
						fmt.Fprintf(tw, "%s\t%s\tunknown: %s\t\t\n", v.Component, node, v.Error)
						continue
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.Component, node, v.Version, v.IstioVersion, v.GoVersion)
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			if failed > 0 {
				return fmt.Errorf("read versions: %d of the components did not answer", failed)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&remote, "remote", true, "also ask istiod, ztunnel and the node agent on every node")
	addOutputFlag(cmd, &output)
	return cmd
}
