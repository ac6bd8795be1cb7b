package app

import (
	"fmt"
	"path"
	"strings"
)

// IstioImagePrefix starts the names of Istio's Bookinfo images, one per
// service and version: examples-bookinfo-<service>-<version> (under
// registry.istio.io/release/ or docker.io/istio/).
const IstioImagePrefix = "examples-bookinfo-"

// ParseImageName reads the service and version out of the name of one of
// Istio's Bookinfo images, e.g.
// registry.istio.io/release/examples-bookinfo-reviews-v2:1.20.3 or just
// examples-bookinfo-reviews-v2: reviews, v2. Istio builds one image per
// service and version, with the version baked in, where Ambit has one
// program; this is how that program stands in for each of those images.
// ok is false for any other name.
func ParseImageName(image string) (service, version string, ok bool) {
	base := path.Base(image)
	if i := strings.IndexByte(base, ':'); i >= 0 {
		base = base[:i]
	}
	rest, found := strings.CutPrefix(base, IstioImagePrefix)
	if !found {
		return "", "", false
	}
	i := strings.LastIndexByte(rest, '-')
	if i < 0 {
		return "", "", false
	}
	service, version = rest[:i], rest[i+1:]
	for _, s := range Services {
		if s == service && strings.HasPrefix(version, "v") && len(version) > 1 {
			return service, version, true
		}
	}
	return "", "", false
}

// ImageName is the name of Istio's image of a service's version, without
// registry and tag: examples-bookinfo-reviews-v2.
func ImageName(service, version string) string {
	return fmt.Sprintf("%s%s-%s", IstioImagePrefix, service, version)
}
