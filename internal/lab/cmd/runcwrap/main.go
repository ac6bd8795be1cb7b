// Command runcwrap runs runc for containerd on the lab's real nodes after
// clamping a negative oomScoreAdj (package runcwrap says why).
package main

import (
	"fmt"
	"os"
	"syscall"

	"github.com/ambitmesh/ambit/internal/lab/runcwrap"
)

func main() {
	wd, _ := os.Getwd()
	if spec := runcwrap.SpecToClamp(os.Args[1:], wd); spec != "" {
		if _, err := runcwrap.Clamp(spec); err != nil {
			fmt.Fprintln(os.Stderr, "runcwrap:", err)
			os.Exit(1)
		}
	}
	err := syscall.Exec(runcwrap.Runc, append([]string{runcwrap.Runc}, os.Args[1:]...), os.Environ())
	fmt.Fprintln(os.Stderr, "runcwrap: exec runc:", err)
	os.Exit(1)
}
