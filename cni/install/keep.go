package install

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/fsnotify/fsnotify"

	"github.com/ambitmesh/ambit/internal/logkey"
)

// Keep inserts entry into the primary conflist of dir and puts it back
// whenever the file changes without it (a primary CNI rewriting its
// configuration), until ctx ends. If dir has no conflist yet, it waits for
// one. ready is called after the first successful insert.
func Keep(ctx context.Context, dir string, entry map[string]any, log *slog.Logger, ready func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	defer w.Close()
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	sync := func() error {
		path, err := PrimaryConflist(dir)
		if err != nil {
			return err
		}
		changed, err := Insert(path, entry)
		if err != nil {
			return err
		}
		if changed {
			log.Info("chained ambit into CNI config", "file", path)
		}
		return nil
	}
	readyDone := false
	check := func() {
		err := sync()
		switch {
		case err == nil:
			if !readyDone && ready != nil {
				ready()
			}
			readyDone = true
		case errors.Is(err, ErrNoConflist):
			log.Info("waiting for the primary CNI config", "dir", dir)
		default:
			// A malformed file is left alone; the next change retries.
			log.Error("chain ambit into CNI config", logkey.Error, err)
		}
	}
	check()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if isTemp(ev.Name) || !strings.HasSuffix(ev.Name, ".conflist") && filepath.Ext(ev.Name) != ".conf" {
				continue
			}
			check()
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			log.Warn("watch CNI config dir", logkey.Error, err)
		}
	}
}
