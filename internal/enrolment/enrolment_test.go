package enrolment

import "testing"

func TestCaptured(t *testing.T) {
	amb := map[string]string{LabelDataplaneMode: ModeAmbient}
	none := map[string]string{LabelDataplaneMode: ModeNone}
	tests := []struct {
		name        string
		pod, ns     map[string]string
		hostNetwork bool
		want        bool
	}{
		{"namespace ambient", nil, amb, false, true},
		{"pod ambient in plain namespace", amb, nil, false, true},
		{"pod opts out of ambient namespace", none, amb, false, false},
		{"nothing labelled", nil, nil, false, false},
		{"other label value", map[string]string{LabelDataplaneMode: "sidecar"}, nil, false, false},
		{"host network in ambient namespace", nil, amb, true, false},
	}
	for _, tc := range tests {
		if got := Captured(tc.pod, tc.ns, tc.hostNetwork); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}
