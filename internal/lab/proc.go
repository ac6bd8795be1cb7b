package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ambitmesh/ambit/internal/netns"
)

// EnvLabID is set in the environment of every process the lab starts, so
// that CleanAll can find processes a crashed run left behind.
const EnvLabID = "AMBIT_LAB_ID"

// process is one program the lab runs, in a network namespace.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
}

// startProcess runs bin in ns with its output in dir/name.log. The process
// is killed if the lab's process dies (Pdeathsig) and runs in a process
// group of its own so that stop reaches its children too.
func startProcess(labID, dir, name string, ns *netns.NS, env []string, bin string, args ...string) (*process, error) {
	return startProcessAt(labID, dir, "", name, ns, env, bin, args...)
}

// startProcessAt is startProcess with workDir as the working directory
// (the caller's when empty).
func startProcessAt(labID, dir, workDir, name string, ns *netns.NS, env []string, bin string, args ...string) (*process, error) {
	cmd := ns.Command(context.Background(), bin, args...)
	cmd.Dir = workDir
	return startCommand(labID, dir, name, cmd, env)
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, and SIGKILL after grace.
func (p *process) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
	// Children that left the group die with it only if still in it.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// tail returns the last n lines of the process's log.
func (p *process) tail(n int) string {
	return tailFile(p.logPath, n)
}

func tailFile(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for s.Scan() {
		lines = append(lines, s.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// labProcesses returns the pids of live processes whose environment has
// EnvLabID, for the given id or for any id when id is empty.
func labProcesses(id string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue // gone, or a kernel thread
		}
		for _, kv := range strings.Split(string(data), "\x00") {
			v, ok := strings.CutPrefix(kv, EnvLabID+"=")
			if ok && (id == "" || v == id) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids, nil
}

// killAll kills the given processes and waits up to a few seconds for them
// to be gone.
func killAll(pids []int) error {
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for {
			err := syscall.Kill(pid, 0)
			if errors.Is(err, syscall.ESRCH) || isZombieOrGone(pid) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("kill lab process %d: still alive", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

func isZombieOrGone(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the parenthesised command name.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// copyBoth copies between a and b until both directions end.
func copyBoth(a, b io.ReadWriteCloser) {
	done := make(chan struct{}, 2)
	cp := func(dst, src io.ReadWriteCloser) {
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
	a.Close()
	b.Close()
}
