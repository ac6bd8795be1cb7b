package memprofile

import (
	"runtime"
	"testing"
)

func TestEnable(t *testing.T) {
	if runtime.MemProfileRate != 0 {
		t.Fatalf("at start: rate %d, want 0 (off)", runtime.MemProfileRate)
	}
	Enable()
	if runtime.MemProfileRate != startRate || startRate == 0 {
		t.Errorf("enabled: rate %d, want %d (not 0)", runtime.MemProfileRate, startRate)
	}
}
