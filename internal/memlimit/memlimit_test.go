package memlimit

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		name    string
		files   []string
		want    int64
		wantErr error
	}{
		{"v2 limit", []string{write("v2", "1073741824\n")}, 1 << 30, nil},
		{"v2 max", []string{write("v2max", "max\n")}, 0, ErrNoLimit},
		{"v1 after missing v2", []string{missing, write("v1", "536870912\n")}, 512 << 20, nil},
		{"v1 unlimited", []string{write("v1max", "9223372036854771712\n")}, 0, ErrNoLimit},
		{"none", []string{missing}, 0, ErrNoLimit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Read(tt.files)
			if got != tt.want || !errors.Is(err, tt.wantErr) {
				t.Errorf("Read: got %d, %v; want %d, %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
	if _, err := Read([]string{write("bad", "lots")}); err == nil {
		t.Error("Read of a malformed file: got nil error, want one naming the value")
	}
}
