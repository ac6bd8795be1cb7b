// Command ambit-cni is Ambit's chained CNI plugin (see cni/plugin).
package main

import (
	"os"

	"github.com/ambitmesh/ambit/cni/plugin"
)

func main() {
	os.Exit(plugin.New().Main())
}
