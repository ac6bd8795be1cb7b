package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestStepperError: a step's error ends the run, names the step, and is
// shown under the step; the steps after it do not run.
func TestStepperError(t *testing.T) {
	var out strings.Builder
	s := &stepper{w: &out}
	var ran []string
	step := func(name string, err error) demoStep {
		return demoStep{name: name, title: "Title of " + name, run: func(context.Context) error {
			ran = append(ran, name)
			if err == nil {
				s.ok("%s done", name)
			}
			return err
		}}
	}
	boom := errors.New("install bookinfo: pod not ready\nlogs: more")
	err := s.runAll(t.Context(), []demoStep{step("lab", nil), step("bookinfo", boom), step("enrol", nil)})
	if !errors.Is(err, boom) {
		t.Fatalf("runAll: got %v, want it to wrap %v", err, boom)
	}
	if got, want := err.Error(), "demo step 2 (bookinfo): "+boom.Error(); got != want {
		t.Errorf("error: got %q, want %q", got, want)
	}
	if diff := cmp.Diff([]string{"lab", "bookinfo"}, ran); diff != "" {
		t.Errorf("steps run (-want +got):\n%s", diff)
	}
	want := "\n==> 1. Title of lab\n    ok   lab done\n" +
		"\n==> 2. Title of bookinfo\n    FAIL install bookinfo: pod not ready\n"
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("output (-want +got):\n%s", diff)
	}
}

// TestStepperFailedChecks: failed checks do not stop the run; err names
// each step they failed in, with their count.
func TestStepperFailedChecks(t *testing.T) {
	var out strings.Builder
	s := &stepper{w: &out}
	checks := func(name string, fails int) demoStep {
		return demoStep{name: name, title: name, run: func(context.Context) error {
			for range fails {
				s.fail("%s check", name)
			}
			return nil
		}}
	}
	if err := s.runAll(t.Context(), []demoStep{checks("capture", 0)}); err != nil {
		t.Fatalf("runAll: %v", err)
	}
	if err := s.err(); err != nil {
		t.Errorf("err with no failed check: got %v, want nil", err)
	}
	if err := s.runAll(t.Context(), []demoStep{checks("encryption", 2), checks("identities", 0), checks("authorization", 1)}); err != nil {
		t.Fatalf("runAll: got %v, want nil: failed checks do not end the run", err)
	}
	want := "demo steps with failed checks: encryption (2 failed), authorization (1 failed)"
	if err := s.err(); err == nil || err.Error() != want {
		t.Errorf("err: got %v, want %q", err, want)
	}
	if got := strings.Count(out.String(), "    FAIL "); got != 3 {
		t.Errorf("FAIL lines: got %d, want 3\n%s", got, out.String())
	}
}
