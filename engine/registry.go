// Package engine loads model bundles into ONNX Runtime sessions, keeps the
// set of loaded model versions, and runs validated tensors through them.
package engine

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/voxserve/voxserve/bundle"
)

// MaxModelBytes caps an ONNX file read at load (2 GiB, protobuf's own limit).
const MaxModelBytes = 2 << 30

// Registry holds the loaded versions of the bundles in a model repository.
// Loads and unloads happen while requests run: a request holds its version
// until it finishes, and an unloaded version is freed only after that.
type Registry struct {
	repo string
	log  *slog.Logger

	loadMu sync.Mutex // serialises loads and unloads
	mu     sync.RWMutex
	models map[string]map[int64]*Model
	// onChange, if set, is called after the loaded set changes (health).
	onChange func()
	// onLost, if set, is told when a run loses the GPU (OnDeviceLost).
	onLost func(model string, err error)
	// loadPrints fingerprints each bundle's files as the last Load read
	// them, loaded or not (Watch).
	loadPrints map[string]string
}

// NewRegistry serves bundles from repo. ONNX Runtime must be initialised.
func NewRegistry(repo string, log *slog.Logger) *Registry {
	if log == nil {
		log = slog.Default()
	}
	return &Registry{repo: repo, log: log, models: map[string]map[int64]*Model{}, loadPrints: map[string]string{}}
}

// OnChange registers a callback run after every load or unload.
func (r *Registry) OnChange(f func()) { r.onChange = f }

// OnDeviceLost registers a callback run when a model's run fails in a way
// that leaves its GPU unusable to this process (CUDA's sticky errors):
// only a restart brings the device back.
func (r *Registry) OnDeviceLost(f func(model string, err error)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.onLost = f
}

// deviceLost tells the OnDeviceLost callback.
func (r *Registry) deviceLost(m *Model, err error) {
	r.mu.Lock()
	f := r.onLost
	r.mu.Unlock()
	if f != nil {
		f(m.String(), err)
	}
}

// Repository is the model repository folder.
func (r *Registry) Repository() string { return r.repo }

// LoadAll loads every bundle in the repository per its version policy. A bad
// bundle is logged and skipped; the errors are returned together.
func (r *Registry) LoadAll() error {
	names, err := bundle.ListRepository(r.repo)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		if _, err := r.Load(name, nil); err != nil {
			r.log.Error("model not loaded", "model", name, "error", err)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Load reads bundle name from the repository and loads the given versions
// (nil: the version policy's). The loaded set becomes exactly those versions:
// others are unloaded, as in Triton, which is how a rollback is done. If any
// version fails, nothing changes.
func (r *Registry) Load(name string, versions []int64) ([]*Model, error) {
	if !validName(name) {
		return nil, status.Errorf(codes.InvalidArgument, "model name %q is not a valid bundle name", name)
	}
	r.loadMu.Lock()
	defer r.loadMu.Unlock()
	if _, err := os.Stat(filepath.Join(r.repo, name, bundle.FileName)); errors.Is(err, fs.ErrNotExist) {
		return nil, status.Errorf(codes.NotFound, "model %q is not in the repository %s", name, r.repo)
	}
	// Fingerprinted before it is read: a change during the load shows at
	// the watcher's next poll.
	r.notePrint(name, fingerprint(filepath.Join(r.repo, name)))
	b, err := bundle.Read(filepath.Join(r.repo, name))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if versions == nil {
		versions = b.Select()
		if len(versions) == 0 {
			return nil, status.Errorf(codes.InvalidArgument, "%s: version_policy selects none of the versions on disk %v", filepath.Join(b.Dir, bundle.FileName), b.Versions)
		}
	}
	for _, v := range versions {
		if !b.Has(v) {
			return nil, status.Errorf(codes.NotFound, "model %q has no version %d (on disk: %v)", name, v, b.Versions)
		}
	}
	loaded := make([]*Model, 0, len(versions))
	for _, v := range versions {
		m, err := r.loadVersion(b, v)
		if err != nil {
			for _, l := range loaded {
				l.close()
			}
			return nil, loadError(err)
		}
		loaded = append(loaded, m)
	}
	next := map[int64]*Model{}
	for _, m := range loaded {
		next[m.Version] = m
	}
	r.mu.Lock()
	old := r.models[name]
	r.models[name] = next
	r.mu.Unlock()
	for _, m := range old {
		go m.close() // in-flight requests finish on the old session
	}
	for _, m := range loaded {
		r.log.Info("model loaded", "model", name, "version", m.Version, "provider", m.Provider(), "io_binding", m.IOBinding(), "path", m.Path)
	}
	r.changed()
	return loaded, nil
}

func (r *Registry) loadVersion(b *bundle.Bundle, v int64) (*Model, error) {
	path := b.ModelPath(v)
	data, err := checkVersion(b, v)
	if err != nil {
		return nil, err
	}
	log := r.log.With("model", b.Spec.Name, "version", v)
	sess, err := newSession(b.Spec, data, log)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	ios, where, err := newInstanceIO(b.Spec, sess, log)
	if err != nil {
		sess.close()
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	m := newModel(b.Spec, v, path, sess)
	m.io, m.ioWhere = ios, where
	m.lost = func(err error) { r.deviceLost(m, err) }
	if ios != nil {
		b := <-ios
		m.ioKind, m.ioDevice = b.mem.kind(), b.mem.device()
		ios <- b
	}
	if err := m.warmup(log); err != nil {
		m.close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// Unload stops serving a model (version 0: every version). It returns once
// the versions' in-flight requests have finished and their sessions are freed.
func (r *Registry) Unload(name string, version int64) ([]int64, error) {
	r.loadMu.Lock()
	defer r.loadMu.Unlock()
	r.mu.Lock()
	vs, ok := r.models[name]
	if !ok || len(vs) == 0 {
		r.mu.Unlock()
		return nil, status.Errorf(codes.NotFound, "model %q is not loaded", name)
	}
	var gone []*Model
	if version == 0 {
		for _, m := range vs {
			gone = append(gone, m)
		}
		delete(r.models, name)
	} else {
		m, ok := vs[version]
		if !ok {
			r.mu.Unlock()
			return nil, status.Errorf(codes.NotFound, "model %q version %d is not loaded (loaded: %v)", name, version, keys(vs))
		}
		gone = append(gone, m)
		delete(vs, version)
		if len(vs) == 0 {
			delete(r.models, name)
		}
	}
	r.mu.Unlock()
	var out []int64
	for _, m := range gone {
		m.close()
		out = append(out, m.Version)
		r.log.Info("model unloaded", "model", name, "version", m.Version)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	r.changed()
	return out, nil
}

// Acquire returns a loaded version (version "" or "0": the newest) and a
// release function the caller must call when done with it.
func (r *Registry) Acquire(name, version string) (*Model, func(), error) {
	var v int64
	if version != "" {
		var err error
		v, err = strconv.ParseInt(version, 10, 64)
		if err != nil || v < 0 {
			return nil, nil, status.Errorf(codes.InvalidArgument, "version %q is not a version number", version)
		}
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	vs, ok := r.models[name]
	if !ok || len(vs) == 0 {
		return nil, nil, status.Errorf(codes.NotFound, "model %q is not loaded (loaded: %v)", name, r.namesLocked())
	}
	var m *Model
	if v == 0 {
		for _, x := range vs {
			if m == nil || x.Version > m.Version {
				m = x
			}
		}
	} else if m, ok = vs[v]; !ok {
		return nil, nil, status.Errorf(codes.NotFound, "model %q version %d is not loaded (loaded: %v)", name, v, keys(vs))
	}
	// Add under the read lock: Unload removes the model under the write lock
	// before it waits, so no Add can race with that Wait.
	m.inflight.Add(1)
	return m, m.inflight.Done, nil
}

// Models lists the loaded versions, sorted by name then version.
func (r *Registry) Models() []*Model {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []*Model
	for _, vs := range r.models {
		for _, m := range vs {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Spec.Name != out[j].Spec.Name {
			return out[i].Spec.Name < out[j].Spec.Name
		}
		return out[i].Version < out[j].Version
	})
	return out
}

// Names lists the loaded model names.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.namesLocked()
}

func (r *Registry) namesLocked() []string {
	out := make([]string, 0, len(r.models))
	for n := range r.models {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Close unloads everything, waiting for in-flight requests.
// Drain answers the requests queued on every model UNAVAILABLE (why) and
// refuses new ones, while the batches already running finish: the first
// step of a graceful shutdown. It returns how many requests it answered.
func (r *Registry) Drain(why string) int {
	n := 0
	for _, m := range r.Models() {
		n += m.sched.drain(why)
	}
	return n
}

func (r *Registry) Close() {
	for _, n := range r.Names() {
		_, _ = r.Unload(n, 0)
	}
}

func (r *Registry) changed() {
	if r.onChange != nil {
		r.onChange()
	}
}

func keys(m map[int64]*Model) []int64 {
	out := make([]int64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func validName(n string) bool {
	if n == "" || n == "." || n == ".." || len(n) > 63 {
		return false
	}
	for _, c := range n {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// Validate checks a bundle folder as a load would, without serving it: the
// descriptor, and every version's ONNX graph against the declaration.
func Validate(dir string) (*bundle.Bundle, error) {
	b, err := bundle.Read(dir)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, v := range b.Versions {
		if _, err := checkVersion(b, v); err != nil {
			errs = append(errs, err)
		}
	}
	return b, errors.Join(errs...)
}

// checkVersion reads a version's ONNX file and checks its graph against the
// bundle's declaration, returning the file's bytes.
func checkVersion(b *bundle.Bundle, v int64) ([]byte, error) {
	path := b.ModelPath(v)
	data, err := readModel(path, MaxModelBytes)
	if err != nil {
		return nil, err
	}
	ins, outs, err := graphInfo(data)
	if err != nil {
		return nil, fmt.Errorf("%s: not a loadable ONNX model: %v", path, err)
	}
	if err := checkGraph(path, b.Spec, ins, outs); err != nil {
		return nil, err
	}
	return data, nil
}
