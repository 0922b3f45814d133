package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/voxserve/voxserve/bundle"
)

// Watch polls the repository every interval, as Triton's
// --model-control-mode=poll does, until ctx ends:
//
//   - a bundle added, or one whose files changed (bundle.yaml, a version
//     folder added or removed, a model file replaced), is loaded per its
//     version policy: the new versions take over as one swap, and requests
//     in flight finish on the old ones, so none fails;
//   - a bundle removed from the repository is unloaded.
//
// A bundle must look the same on two polls in a row before it is acted on,
// so that a model file still being copied is not loaded half-written. A
// bundle that fails to load is logged once and retried only when its files
// change again; the versions already loaded keep serving. The watcher acts
// only on changes: a version pinned with LoadModel, or a model unloaded
// with UnloadModel, stays so until its files change.
func (r *Registry) Watch(ctx context.Context, every time.Duration) {
	w := &watcher{r: r}
	w.last, _ = r.scan()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			now, err := r.scan()
			if err != nil {
				r.log.Error("model repository not polled", "error", err)
				continue
			}
			w.step(now)
		}
	}
}

// snapshot maps each bundle in the repository to a fingerprint of its
// files.
type snapshot map[string]string

type watcher struct {
	r    *Registry
	last snapshot // the previous poll
}

// step acts on a poll. What a bundle looked like when it was last loaded
// (or tried) is the registry's record, taken as Load reads the bundle, so
// that a change made between a load and the watcher's first poll, or
// during a load, is not missed.
func (w *watcher) step(now snapshot) {
	r := w.r
	loaded := r.prints()
	for name, fp := range now {
		if fp == loaded[name] || fp != w.last[name] {
			continue // as loaded, or still changing
		}
		if _, err := r.Load(name, nil); err != nil {
			r.log.Error("repository poll: bundle not loaded; what was loaded keeps serving", "model", name, "error", err)
		} else {
			r.log.Info("repository poll: bundle loaded", "model", name)
		}
	}
	for name := range loaded {
		if _, ok := now[name]; ok {
			continue
		}
		if _, ok := w.last[name]; ok {
			continue // gone in this poll only: wait for the next
		}
		r.forgetPrint(name)
		if vs, err := r.Unload(name, 0); err == nil {
			r.log.Info("repository poll: bundle removed, unloaded", "model", name, "versions", vs)
		}
	}
	w.last = now
}

// prints copies the fingerprints bundles had when last loaded.
func (r *Registry) prints() snapshot {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := snapshot{}
	for k, v := range r.loadPrints {
		out[k] = v
	}
	return out
}

func (r *Registry) forgetPrint(name string) {
	r.mu.Lock()
	delete(r.loadPrints, name)
	r.mu.Unlock()
}

func (r *Registry) notePrint(name, fp string) {
	r.mu.Lock()
	r.loadPrints[name] = fp
	r.mu.Unlock()
}

// scan fingerprints every bundle folder: the size and modification time of
// each file in it and in its version folders.
func (r *Registry) scan() (snapshot, error) {
	entries, err := os.ReadDir(r.repo)
	if err != nil {
		return nil, fmt.Errorf("model repository: %w", err)
	}
	s := snapshot{}
	for _, e := range entries {
		if !e.IsDir() || !validName(e.Name()) {
			continue
		}
		dir := filepath.Join(r.repo, e.Name())
		if _, err := os.Stat(filepath.Join(dir, bundle.FileName)); err != nil {
			continue
		}
		s[e.Name()] = fingerprint(dir)
	}
	return s, nil
}

func fingerprint(dir string) string {
	var lines []string
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(dir, path)
		if d.IsDir() {
			if rel != "." && filepath.Dir(rel) != "." {
				return filepath.SkipDir // the bundle's files and its version folders' only
			}
			lines = append(lines, rel+"/")
			return nil
		}
		if info, err := d.Info(); err == nil {
			lines = append(lines, fmt.Sprintf("%s %d %d", rel, info.Size(), info.ModTime().UnixNano()))
		}
		return nil
	})
	sort.Strings(lines)
	h := sha256.New()
	for _, l := range lines {
		h.Write([]byte(l + "\n"))
	}
	return hex.EncodeToString(h.Sum(nil))
}
