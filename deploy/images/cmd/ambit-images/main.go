// Command ambit-images builds Ambit's container images (see package
// images) into an output directory and prints their references and digests.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/ambitmesh/ambit/deploy/images"
)

func main() {
	o := images.Options{}
	flag.StringVar(&o.Root, "root", ".", "the Ambit source tree")
	flag.StringVar(&o.Out, "out", "_output/images", "output directory")
	flag.StringVar(&o.Version, "version", "", "tag of the images (default: the chart's appVersion)")
	flag.StringVar(&o.Hub, "hub", "", "registry of the images (default: the chart's hub)")
	flag.Parse()
	epoch, err := images.EpochFromEnv()
	if err == nil {
		o.Epoch = epoch
		var built []images.Image
		built, err = images.Build(context.Background(), o)
		for _, im := range built {
			fmt.Printf("%s@%s\t%s\n", im.Ref, im.Digest, im.Layout)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ambit-images:", err)
		os.Exit(1)
	}
}
