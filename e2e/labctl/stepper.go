package main

import (
	"context"
	"fmt"
	"io"
	"strings"
)

// A demoStep shows one thing. Its title is printed, numbered, before it
// runs; name says which step it is when it fails.
type demoStep struct {
	name  string
	title string
	run   func(ctx context.Context) error
}

// stepper prints the demo's steps and what each one shows, and counts
// the checks that failed in each step.
type stepper struct {
	w       io.Writer
	n       int    // number of the last step or note printed
	current string // name of the step running
	failed  []string
	fails   map[string]int // failed checks by step name
}

// run prints st's title and runs st. An error ends the demo: its first
// line is printed under the step, and it is returned with the step's
// number and name. Checks that fail (fail) do not stop the demo; err
// reports them at the end.
func (s *stepper) run(ctx context.Context, st demoStep) error {
	s.say("%s", st.title)
	s.current = st.name
	defer func() { s.current = "" }()
	if err := st.run(ctx); err != nil {
		first, _, _ := strings.Cut(strings.TrimSpace(err.Error()), "\n")
		fmt.Fprintf(s.w, "    FAIL %s\n", first)
		return fmt.Errorf("demo step %d (%s): %w", s.n, st.name, err)
	}
	return nil
}

// runAll runs steps in order until one returns an error.
func (s *stepper) runAll(ctx context.Context, steps []demoStep) error {
	for _, st := range steps {
		if err := s.run(ctx, st); err != nil {
			return err
		}
	}
	return nil
}

// say prints a numbered heading: a step's title, or a note between steps.
func (s *stepper) say(format string, args ...any) {
	s.n++
	fmt.Fprintf(s.w, "\n==> %d. %s\n", s.n, fmt.Sprintf(format, args...))
}

// ok prints something the running step showed.
func (s *stepper) ok(format string, args ...any) {
	fmt.Fprintf(s.w, "    ok   %s\n", strings.TrimSpace(fmt.Sprintf(format, args...)))
}

// detail prints a line of what a command printed, under the step.
func (s *stepper) detail(format string, args ...any) {
	fmt.Fprintf(s.w, "         %s\n", fmt.Sprintf(format, args...))
}

// fail prints a check of the running step that failed; the demo goes on.
func (s *stepper) fail(format string, args ...any) {
	if s.fails == nil {
		s.fails = map[string]int{}
	}
	if s.fails[s.current] == 0 {
		s.failed = append(s.failed, s.current)
	}
	s.fails[s.current]++
	fmt.Fprintf(s.w, "    FAIL %s\n", strings.TrimSpace(fmt.Sprintf(format, args...)))
}

// err reports the steps in which checks failed, or nil.
func (s *stepper) err() error {
	if len(s.failed) == 0 {
		return nil
	}
	var parts []string
	for _, name := range s.failed {
		parts = append(parts, fmt.Sprintf("%s (%d failed)", name, s.fails[name]))
	}
	return fmt.Errorf("demo steps with failed checks: %s", strings.Join(parts, ", "))
}
