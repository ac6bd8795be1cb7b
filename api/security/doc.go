// Package security is the Go code generated from authorization.proto: the
// messages of type.googleapis.com/istio.security.Authorization,
// wire-compatible with Istio's ambient authorization API.
package security
