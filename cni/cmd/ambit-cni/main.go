// Command ambit-cni is Ambit's chained CNI plugin (see cni/plugin).
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ambitmesh/ambit/cni/plugin"
)

func main() {
	skel.PluginMainFuncs(plugin.New().Funcs(), version.All, "ambit-cni: enrols ambient pods with Ambit's node agent")
}
