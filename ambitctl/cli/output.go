package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// Output formats of -o.
const (
	outTable = ""
	outJSON  = "json"
	outYAML  = "yaml"
)

func addOutputFlag(cmd *cobra.Command, out *string) {
	cmd.Flags().StringVarP(out, "output", "o", outTable, "output format: yaml or json (a table when empty)")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{outJSON, outYAML}, cobra.ShellCompDirectiveNoFileComp))
}

func checkOutput(out string) error {
	switch out {
	case outTable, outJSON, outYAML:
		return nil
	}
	return usageErr("output %q: want yaml or json", out)
}

// printStructured writes v as JSON or YAML.
func printStructured(w io.Writer, format string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("marshal output: %w", err)
	}
	if format == outYAML {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return fmt.Errorf("marshal output: %w", err)
		}
		_, err = w.Write(b)
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// newTable is the tab writer of every table (kubectl's spacing).
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
}

func orNone(s string) string {
	if s == "" {
		return "None"
	}
	return s
}
