package engine

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/internal/onnxbuild"
	"github.com/voxserve/voxserve/internal/testlog"
	"github.com/voxserve/voxserve/internal/testrepo"
	"github.com/voxserve/voxserve/tensor"
)

func loadedVersions(r *Registry, name string) []int64 {
	for _, m := range r.Models() {
		if m.Spec.Name == name {
			return []int64{m.Version}
		}
	}
	return nil
}

// TestWatchFollowsTheRepository: bundles added, changed and removed on
// disk are loaded and unloaded, with requests running all the while and
// none failing.
func TestWatchFollowsTheRepository(t *testing.T) {
	repo := testrepo.Write(t, testrepo.Affine())
	var logs testlog.Buffer
	reg := NewRegistry(repo, slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, reg.LoadAll())
	t.Cleanup(reg.Close)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go reg.Watch(ctx, 20*time.Millisecond)

	// Requests all along: the version switch must not fail any.
	var failed, served atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			m, release, err := reg.Acquire("affine", "")
			if err != nil {
				failed.Add(1)
				continue
			}
			in := tensor.FromFloat32("x", []int64{1, 2, 3}, []float32{1, 2, 3, 4, 5, 6})
			if _, _, err := m.Infer(context.Background(), []*tensor.Tensor{in}); err != nil {
				failed.Add(1)
			}
			served.Add(1)
			release()
		}
	}()

	// A new version folder: the default policy (latest 1) serves it.
	vd := filepath.Join(repo, "affine", "2")
	require.NoError(t, os.MkdirAll(vd, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(vd, "model.onnx"), onnxbuild.Affine([]int64{2, 3}, 3, 0).Marshal(), 0o644))
	require.Eventually(t, func() bool { v := loadedVersions(reg, "affine"); return len(v) == 1 && v[0] == 2 }, 10*time.Second, 10*time.Millisecond)

	// A new bundle.
	b := testrepo.Affine()
	b.Name = "affine2"
	b.YAML = "name: affine2" + testrepo.AffineYAML[len("name: affine"):]
	testrepo.Add(t, repo, b)
	require.Eventually(t, func() bool { return loadedVersions(reg, "affine2") != nil }, 10*time.Second, 10*time.Millisecond)

	// A broken bundle.yaml: logged, and what was loaded keeps serving.
	yaml := filepath.Join(repo, "affine2", "bundle.yaml")
	require.NoError(t, os.WriteFile(yaml, []byte("name: affine2\ninputs: [\n"), 0o644))
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "bundle not loaded") }, 10*time.Second, 10*time.Millisecond)
	assert.NotNil(t, loadedVersions(reg, "affine2"))
	// Fixed again: loaded.
	require.NoError(t, os.WriteFile(yaml, []byte(b.YAML), 0o644))
	later := time.Now().Add(time.Minute)
	require.NoError(t, os.Chtimes(yaml, later, later))
	require.Eventually(t, func() bool {
		return strings.Count(logs.String(), `msg="repository poll: bundle loaded" model=affine2`) == 2
	}, 10*time.Second, 10*time.Millisecond)

	// Removed: unloaded.
	require.NoError(t, os.RemoveAll(filepath.Join(repo, "affine2")))
	require.Eventually(t, func() bool { return loadedVersions(reg, "affine2") == nil }, 10*time.Second, 10*time.Millisecond)

	close(stop)
	wg.Wait()
	assert.Zero(t, failed.Load(), "no request failed across the changes")
	assert.Positive(t, served.Load())
}

// TestWatchWaitsForFilesToSettle: a bundle is acted on only when two polls
// see it the same, and an admin's unload stands until the files change.
func TestWatchWaitsForFilesToSettle(t *testing.T) {
	repo := testrepo.Write(t, testrepo.Affine())
	reg := NewRegistry(repo, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, reg.LoadAll())
	t.Cleanup(reg.Close)
	w := &watcher{r: reg}
	w.last, _ = reg.scan()

	b := testrepo.Affine()
	b.Name = "late"
	b.YAML = "name: late" + testrepo.AffineYAML[len("name: affine"):]
	testrepo.Add(t, repo, b)
	s1, err := reg.scan()
	require.NoError(t, err)
	w.step(s1)
	assert.Nil(t, loadedVersions(reg, "late"), "seen once: maybe still being copied")
	s2, _ := reg.scan()
	w.step(s2)
	assert.NotNil(t, loadedVersions(reg, "late"), "the same twice: loaded")

	_, err = reg.Unload("late", 0)
	require.NoError(t, err)
	s3, _ := reg.scan()
	w.step(s3)
	assert.Nil(t, loadedVersions(reg, "late"), "an unload through the API stands while the files do not change")

	require.NoError(t, os.RemoveAll(filepath.Join(repo, "affine")))
	s4, _ := reg.scan()
	w.step(s4)
	assert.NotNil(t, loadedVersions(reg, "affine"), "gone in one poll only")
	s5, _ := reg.scan()
	w.step(s5)
	assert.Nil(t, loadedVersions(reg, "affine"), "gone in two: unloaded")
}

// TestWatchSeesChangesBeforeItStarts: a version added after the models
// loaded but before the watcher's first poll is still picked up (the
// baseline is what was loaded, not the first poll).
func TestWatchSeesChangesBeforeItStarts(t *testing.T) {
	repo := testrepo.Write(t, testrepo.Affine())
	reg := NewRegistry(repo, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, reg.LoadAll())
	t.Cleanup(reg.Close)
	vd := filepath.Join(repo, "affine", "2")
	require.NoError(t, os.MkdirAll(vd, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(vd, "model.onnx"), onnxbuild.Affine([]int64{2, 3}, 3, 0).Marshal(), 0o644))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go reg.Watch(ctx, 10*time.Millisecond)
	require.Eventually(t, func() bool { v := loadedVersions(reg, "affine"); return len(v) == 1 && v[0] == 2 }, 10*time.Second, 10*time.Millisecond)
}
