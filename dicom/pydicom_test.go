package dicom

import (
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/tensor"
)

// python returns the project virtualenv's interpreter. make test creates it
// and sets VOXSERVE_REQUIRE_PYTHON, so that CI never skips these tests.
func python(t *testing.T) string {
	t.Helper()
	p, _ := filepath.Abs("../.venv/bin/python")
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("VOXSERVE_REQUIRE_PYTHON") != "" {
			t.Fatalf("the project virtualenv is missing (%v); run make test", err)
		}
		t.Skip("no .venv: run `make test` for the comparisons against pydicom")
	}
	return p
}

var pydicomDirOnce struct {
	sync.Once
	dir string
	err error
}

func pydicomDir(t *testing.T) string {
	t.Helper()
	py := python(t)
	pydicomDirOnce.Do(func() {
		out, err := exec.Command(py, "-c", "import os, pydicom; print(os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files'))").Output()
		pydicomDirOnce.dir, pydicomDirOnce.err = strings.TrimSpace(string(out)), err
	})
	require.NoError(t, pydicomDirOnce.err)
	return pydicomDirOnce.dir
}

type pyResult struct {
	Error       string    `json:"error"`
	Rows        int       `json:"rows"`
	Columns     int       `json:"columns"`
	Frames      int       `json:"frames"`
	Photometric string    `json:"photometric"`
	Slope       float64   `json:"slope"`
	Intercept   float64   `json:"intercept"`
	Position    []float64 `json:"position"`
	Orientation []float64 `json:"orientation"`
	Spacing     []float64 `json:"spacing"`
	Syntax      string    `json:"syntax"`
}

// lossy transfer syntaxes, where two correct decoders may differ by a unit.
var lossy = map[string]bool{JPEGBaseline: true, JPEGExtended: true}

// TestAgainstPydicom reads every file in pydicom's test set with both
// readers. Every file gets a result or a clear error from us; where both
// decode, the stored values and the geometry must agree.
func TestAgainstPydicom(t *testing.T) {
	dir := pydicomDir(t)
	files, err := filepath.Glob(filepath.Join(dir, "*.dcm"))
	require.NoError(t, err)
	require.Greater(t, len(files), 50)
	out := t.TempDir()
	cmd := exec.Command(python(t), append([]string{"../scripts/pydicom_dump.py", out}, files...)...)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Run())
	raw, err := os.ReadFile(filepath.Join(out, "index.json"))
	require.NoError(t, err)
	var index map[string]pyResult
	require.NoError(t, json.Unmarshal(raw, &index))

	both := 0
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(f)
			require.NoError(t, err)
			in, err := Read(name, data)
			py := index[name]
			if err == nil {
				var frames [][]int64
				for i := 0; i < in.NumberOfFrames && err == nil; i++ {
					var v []int64
					if v, err = in.StoredFrame(i, nil); err == nil {
						frames = append(frames, v)
					}
				}
				if err == nil {
					if py.Error != "" {
						t.Logf("we decode it, pydicom does not: %s", py.Error)
						return
					}
					both++
					compare(t, in, frames, py, filepath.Join(out, name+".npy"))
					return
				}
			}
			// Our refusal must be a clear one-line error naming the file.
			assert.True(t, strings.HasPrefix(err.Error(), name+":"), err.Error())
			assert.NotContains(t, err.Error(), "\n")
			t.Logf("refused: %v (pydicom: %s)", err, orOK(py.Error))
		})
	}
	t.Logf("%d of %d files decoded by both readers and compared", both, len(files))
	assert.GreaterOrEqual(t, both, 15)
}

func orOK(s string) string {
	if s == "" {
		return "decodes it"
	}
	return s
}

func compare(t *testing.T, in *Instance, frames [][]int64, py pyResult, npy string) {
	t.Helper()
	require.Equal(t, py.Rows, in.Rows)
	require.Equal(t, py.Columns, in.Columns)
	require.Equal(t, py.Frames, in.NumberOfFrames)
	f, err := os.Open(npy)
	require.NoError(t, err)
	defer f.Close()
	ref, err := tensor.ReadNpy(f, 0)
	require.NoError(t, err)
	want := int64sOf(ref.Data)
	tol := int64(0)
	if lossy[in.TransferSyntax] {
		tol = 1 // IDCT rounding differs between correct decoders
	}
	n := in.Pixels()
	worst := int64(0)
	for i, fr := range frames {
		for j, v := range fr {
			d := v - want[i*n+j]
			if d < 0 {
				d = -d
			}
			worst = max(worst, d)
		}
	}
	assert.LessOrEqual(t, worst, tol, "largest stored-value difference from pydicom")
	// DecodeFrame (fast paths included) must equal the modality LUT applied
	// to the stored values.
	dst := make([]float32, n)
	lo, hi := in.storedRange()
	for i, fr := range frames {
		require.NoError(t, in.DecodeFrame(i, dst))
		f := in.Frames[i]
		for j, v := range fr {
			if in.Photometric == "MONOCHROME1" {
				v = lo + hi - v
			}
			want := float64(v)*f.Slope + f.Intercept
			require.InDelta(t, want, float64(dst[j]), 1e-5*max(1, math.Abs(want)), "frame %d pixel %d", i, j)
		}
	}
	fr := in.Frames[0]
	assert.InDelta(t, py.Slope, fr.Slope, 1e-9)
	assert.InDelta(t, py.Intercept, fr.Intercept, 1e-9)
	if py.Position != nil && in.NumberOfFrames == 1 {
		assert.InDeltaSlice(t, py.Position, fr.Position[:], 1e-9)
	}
	if py.Orientation != nil {
		assert.InDeltaSlice(t, py.Orientation, fr.Orientation[:], 1e-9)
	}
	if py.Spacing != nil {
		assert.InDeltaSlice(t, py.Spacing, fr.PixelSpacing[:], 1e-9)
	}
}

func int64sOf(b []byte) []int64 {
	out := make([]int64, len(b)/8)
	for i := range out {
		var v uint64
		for k := 0; k < 8; k++ {
			v |= uint64(b[8*i+k]) << (8 * k)
		}
		out[i] = int64(v)
	}
	return out
}
