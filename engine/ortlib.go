package engine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/voxserve/voxserve/engine/ortbind"
)

// LibraryEnv overrides where the ONNX Runtime shared library is looked for.
const LibraryEnv = "VOXSERVE_ORT_LIB"

const libName = "libonnxruntime.so.1"

// FindLibrary returns the ONNX Runtime library to load: the explicit path if
// given, then $VOXSERVE_ORT_LIB, then the places `make deps` and an install
// put it (beside the binary, ../lib, the repository's .deps folder found from
// the binary or the working directory).
func FindLibrary(explicit string) (string, error) {
	if explicit != "" {
		return checkLib(explicit)
	}
	if env := os.Getenv(LibraryEnv); env != "" {
		return checkLib(env)
	}
	var candidates []string
	if exe, err := os.Executable(); err == nil {
		dir := filepath.Dir(exe)
		candidates = append(candidates,
			filepath.Join(dir, libName),
			filepath.Join(dir, "..", "lib", libName))
		candidates = append(candidates, upward(dir)...)
	}
	if wd, err := os.Getwd(); err == nil {
		candidates = append(candidates, upward(wd)...)
	}
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			return filepath.Clean(c), nil
		}
	}
	return "", fmt.Errorf("ONNX Runtime library %s not found (run `make deps`, or set --onnxruntime-lib or $%s); looked in:\n  %s",
		libName, LibraryEnv, strings.Join(candidates, "\n  "))
}

// upward lists .deps/onnxruntime/<lib> in dir and each parent.
func upward(dir string) []string {
	var out []string
	for {
		out = append(out, filepath.Join(dir, ".deps", "onnxruntime", libName))
		parent := filepath.Dir(dir)
		if parent == dir {
			return out
		}
		dir = parent
	}
}

func checkLib(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("ONNX Runtime library: %w", err)
	}
	if st.IsDir() {
		return "", fmt.Errorf("ONNX Runtime library: %s is a folder", path)
	}
	return path, nil
}

var (
	initOnce sync.Once
	initErr  error
	initPath string
)

// Init loads ONNX Runtime once per process. Later calls return the first
// call's result; a different path after a successful load is an error.
func Init(libPath string) error {
	initOnce.Do(func() {
		path, err := FindLibrary(libPath)
		if err != nil {
			initErr = err
			return
		}
		ort.SetSharedLibraryPath(path)
		if err := ort.InitializeEnvironment(ort.WithLogLevelError()); err != nil {
			initErr = fmt.Errorf("loading ONNX Runtime from %s: %w", path, err)
			return
		}
		initPath = path
		if err := ortbind.Load(path); err != nil {
			errBindUnavailable = fmt.Errorf("binding ONNX Runtime's C API: %w", err)
		} else {
			errBindUnavailable = nil
		}
	})
	if initErr == nil && libPath != "" && initPath != "" {
		if a, b := absPath(libPath), absPath(initPath); a != b {
			return errors.New("ONNX Runtime is already loaded from " + initPath)
		}
	}
	return initErr
}

// RuntimeVersion is the loaded ONNX Runtime's version, or "" before Init.
func RuntimeVersion() string {
	if !ort.IsInitialized() {
		return ""
	}
	return ort.GetVersion()
}

func absPath(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}
