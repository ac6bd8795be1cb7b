// Package enrolment decides which pods are in the ambient mesh, with
// Istio's labels and meaning: a pod is captured when its namespace or the
// pod itself has istio.io/dataplane-mode=ambient and the pod does not opt
// out with istio.io/dataplane-mode=none. Host-network pods never are.
package enrolment

const (
	// LabelDataplaneMode is the label that enrols a namespace or a pod.
	LabelDataplaneMode = "istio.io/dataplane-mode"
	// ModeAmbient enrols; ModeNone opts a pod out.
	ModeAmbient = "ambient"
	ModeNone    = "none"
	// AnnotationRedirection is set to AnnotationEnabled on pods whose
	// traffic is redirected, as Istio's CNI agent does.
	AnnotationRedirection = "ambient.istio.io/redirection"
	AnnotationEnabled     = "enabled"
)

// Captured reports whether a pod with these labels, in a namespace with
// these labels, is in the mesh.
func Captured(podLabels, namespaceLabels map[string]string, hostNetwork bool) bool {
	if hostNetwork {
		return false
	}
	switch podLabels[LabelDataplaneMode] {
	case ModeNone:
		return false
	case ModeAmbient:
		return true
	}
	return namespaceLabels[LabelDataplaneMode] == ModeAmbient
}
