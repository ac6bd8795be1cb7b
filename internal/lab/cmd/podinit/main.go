// Command podinit starts a container of a pod on the lab's kubelet
// stand-in: it mounts the pod's volumes at the container's mount paths,
// then executes the container's command. The stand-in starts it with `ip
// netns exec`, which has already given it a mount namespace of its own
// whose mounts do not propagate back to the host; podinit's mounts are
// seen by the container alone, as a container runtime's are.
//
//	podinit --mount SRC=DST[:ro]... -- COMMAND [ARG...]
//
// A mount path whose directory does not exist on the host (the lab has no
// image root filesystem) is made in a tmpfs laid over the nearest
// directory that does, with that directory's entries bound back into it,
// so the host's file system is never written.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "podinit:", err)
		os.Exit(127)
	}
}

type mount struct {
	src, dst string
	ro       bool
	// fd holds src open (O_PATH) from before the first mount: a mount
	// over a directory above a later source (Istio's manifests mount an
	// emptyDir over /tmp, where the lab keeps its files) would hide it.
	fd int
}

func run(args []string) error {
	var mounts []mount
	for len(args) > 0 && args[0] != "--" {
		if args[0] != "--mount" || len(args) < 2 {
			return fmt.Errorf("parse arguments: got %q, want --mount SRC=DST[:ro]... -- COMMAND", args[0])
		}
		src, dst, ok := strings.Cut(args[1], "=")
		if !ok || !filepath.IsAbs(src) || dst == "" {
			return fmt.Errorf("parse --mount %q: want SRC=DST[:ro] with absolute paths", args[1])
		}
		m := mount{src: src}
		m.dst, m.ro = strings.CutSuffix(dst, ":ro")
		if !filepath.IsAbs(m.dst) {
			return fmt.Errorf("parse --mount %q: want SRC=DST[:ro] with absolute paths", args[1])
		}
		mounts = append(mounts, m)
		args = args[2:]
	}
	if len(args) < 2 {
		return errors.New("parse arguments: no command after --")
	}
	argv := args[1:]
	// The command is opened before any mount too: a volume mounted over
	// its directory (an emptyDir at /tmp, where a lab under /tmp keeps
	// its binaries) would hide it. It runs from the open file.
	bin := argv[0]
	if !strings.ContainsRune(bin, '/') {
		p, err := lookPath(bin)
		if err != nil {
			return err
		}
		bin = p
	}
	binFD, err := unix.Open(bin, unix.O_PATH, 0)
	if err != nil {
		return fmt.Errorf("open command %s: %w", bin, err)
	}
	for i := range mounts {
		fd, err := unix.Open(mounts[i].src, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("mount %s: %w", mounts[i].src, err)
		}
		mounts[i].fd = fd
	}
	for _, m := range mounts {
		if err := bind(m); err != nil {
			return err
		}
	}
	if err := syscall.Exec(fmt.Sprintf("/proc/self/fd/%d", binFD), argv, os.Environ()); err != nil {
		return fmt.Errorf("exec %s: %w", bin, err)
	}
	return nil
}

func lookPath(name string) (string, error) {
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("find %s in PATH", name)
}

// bind mounts m.src (through its open fd) at m.dst, making m.dst first
// if needed.
func bind(m mount) error {
	src := fmt.Sprintf("/proc/self/fd/%d", m.fd)
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("mount %s: %w", m.src, err)
	}
	if err := mountpoint(m.dst, fi.IsDir()); err != nil {
		return fmt.Errorf("mount %s at %s: %w", m.src, m.dst, err)
	}
	if err := unix.Mount(src, m.dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("mount %s at %s: %w", m.src, m.dst, err)
	}
	if m.ro {
		if err := unix.Mount("", m.dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("mount %s read-only: %w", m.dst, err)
		}
	}
	return nil
}

// mountpoint makes dst (a directory, or a file when !dir) exist without
// writing to the host's file system: the nearest existing directory above
// it is shadowed by a tmpfs holding binds of its entries.
func mountpoint(dst string, dir bool) error {
	if _, err := os.Lstat(dst); err == nil {
		return nil
	}
	anc := filepath.Dir(dst)
	for {
		if _, err := os.Lstat(anc); err == nil {
			break
		}
		anc = filepath.Dir(anc)
	}
	anc, err := filepath.EvalSymlinks(anc)
	if err != nil {
		return err
	}
	if anc == "/" {
		return errors.New("cannot shadow the root directory")
	}
	if err := shadow(anc); err != nil {
		return err
	}
	// dst's path may go through a symlink (/var/run): resolve what exists.
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if dir {
		return os.Mkdir(dst, 0o755)
	}
	return os.WriteFile(dst, nil, 0o644)
}

// shadow lays a tmpfs over dir with every entry of dir bound back in.
func shadow(dir string) error {
	stage, err := os.MkdirTemp("", "podinit-")
	if err != nil {
		return err
	}
	defer os.Remove(stage)
	if err := unix.Mount(dir, stage, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("shadow %s: %w", dir, err)
	}
	defer unix.Unmount(stage, unix.MNT_DETACH)
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("mode=%o", fi.Mode().Perm())); err != nil {
		return fmt.Errorf("shadow %s: %w", dir, err)
	}
	entries, err := os.ReadDir(stage)
	if err != nil {
		return err
	}
	for _, e := range entries {
		from, to := filepath.Join(stage, e.Name()), filepath.Join(dir, e.Name())
		switch {
		case e.Type()&os.ModeSymlink != 0:
			target, err := os.Readlink(from)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, to); err != nil {
				return err
			}
			continue
		case e.IsDir():
			err = os.Mkdir(to, 0o755)
		default:
			err = os.WriteFile(to, nil, 0o644)
		}
		if err != nil {
			return err
		}
		if err := unix.Mount(from, to, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("shadow %s: bind %s: %w", dir, e.Name(), err)
		}
	}
	return nil
}
