// Package realnode holds the end-to-end tests on a real node: the lab's
// control plane with a real kubelet, Debian's containerd and runc in a
// network and mount namespace of their own, pulling images built offline
// (deploy/images) from a registry the test serves on the lab network.
// TestInstall installs Ambit as the README says (commands.go), with the
// Helm command line and kubectl, and uninstalls it; cmd/ambit-cluster
// (`make cluster`) starts the same cluster for a person. It is a module
// of its own so that go-containerregistry stays out of Ambit's module.
// The tests need root.
package realnode
