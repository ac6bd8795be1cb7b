package redirect

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// ProbeTCX reports whether the kernel attaches tc programs with TCX
// (Linux 6.6+), as New does when it picks the attach mode: it loads a
// program that does nothing, never attaches it anywhere, and unloads it.
// It needs the right to load BPF programs (root); without, it returns
// ebpf.ErrNotPermitted (wrapped).
func ProbeTCX() (bool, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "ambit_probe",
		Type:         ebpf.SchedCLS,
		License:      "Dual BSD/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return false, fmt.Errorf("probe tcx: load a tc program: %w", err)
	}
	defer prog.Close()
	return haveTCX(prog), nil
}
