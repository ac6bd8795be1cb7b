package app

import "net/http"

// Headers productpage copies from its request to its calls, as Istio's
// productpage does: tracing (B3, W3C trace context, Datadog, Lightstep,
// Cloud Trace, gRPC binary, SkyWalking), x-request-id, and the client's
// user agent, cookies and credentials. end-user is not among them: it comes
// from the signed-in user (see productpage's /login).
var productpageForwarded = []string{
	"x-request-id",
	"x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3",
	"x-ot-span-context",
	"x-datadog-trace-id", "x-datadog-parent-id", "x-datadog-sampling-priority",
	"traceparent", "tracestate",
	"x-cloud-trace-context",
	"grpc-trace-bin",
	"sw8",
	"user-agent",
	"cookie", "authorization", "jwt",
}

// Headers reviews copies to its call to ratings, as Istio's reviews does:
// productpage's list and end-user, so that routing rules on end-user also
// apply to the ratings hop.
var reviewsForwarded = append(append([]string(nil), productpageForwarded...), "end-user")

// forward copies the named headers from in to out.
func forward(out, in http.Header, names []string) {
	for _, n := range names {
		if vs := in.Values(n); len(vs) > 0 {
			out[http.CanonicalHeaderKey(n)] = append([]string(nil), vs...)
		}
	}
}
