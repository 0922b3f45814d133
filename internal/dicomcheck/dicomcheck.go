// Package dicomcheck runs the independent validators of voxserve's DICOM
// outputs from Go tests: dciodvfy (Debian's dicom3tools) and
// scripts/check_dicom_outputs.py (highdicom and pydicom). make test
// installs both and sets VOXSERVE_REQUIRE_PYTHON, so CI never skips them.
package dicomcheck

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/voxserve/voxserve/tensor"
)

// root is the repository root, found from this file.
func root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func tool(t testing.TB, path, what string) string {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("VOXSERVE_REQUIRE_PYTHON") != "" {
			t.Fatalf("%s is missing (%v); run make test", what, err)
		}
		t.Skipf("%s is missing: run `make test` for the DICOM validators", what)
	}
	return path
}

// AcceptedWarnings are dciodvfy warnings that do not indicate a defect in
// our objects, with the reason each is accepted.
var AcceptedWarnings = map[string]string{
	// dciodvfy checks whether an object could be listed in a DICOMDIR; our
	// objects copy the source's (possibly empty, Type 2) study attributes.
	"Missing attribute or value that would be needed to build DICOMDIR": "DICOMDIR listing is not our concern; empty Type 2 values are copied from the source",
	// Our private coding scheme is legal (PS3.16 8.2: designators starting
	// with 99 are local) but not in dciodvfy's list of known designators.
	"Unrecognized defined term = <99VOXSERVE>": "99VOXSERVE is a local scheme for concepts with no standard code",
	// IHE AI Results puts the algorithm's Device UID in the Contributing
	// Equipment Sequence; this dicom3tools release (2022) does not list the
	// attribute in that sequence.
	"DeviceUID(0018,1002)> - Attribute is not present in standard DICOM IOD": "IHE AI Results requires it",
}

// Dciodvfy validates a Part 10 file against its IOD and returns the errors
// and the warnings that AcceptedWarnings does not cover.
func Dciodvfy(t testing.TB, path string) (errs, warnings []string) {
	t.Helper()
	bin := tool(t, filepath.Join(root(), ".deps", "dicom3tools", "usr", "bin", "dciodvfy"), "dciodvfy")
	out, _ := exec.Command(bin, "-new", path).CombinedOutput() // exits non-zero on warnings too
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "Error"):
			errs = append(errs, line)
		case strings.HasPrefix(line, "Warning"):
			accepted := false
			for w := range AcceptedWarnings {
				if strings.Contains(line, w) {
					accepted = true
				}
			}
			if !accepted {
				warnings = append(warnings, line)
			}
		}
	}
	return errs, warnings
}

// Manifest says what scripts/check_dicom_outputs.py compares.
type Manifest struct {
	Source       []string          `json:"source"`
	TruthLabels  string            `json:"truth_labels,omitempty"`
	SEG          string            `json:"seg,omitempty"`
	Segments     map[string]int    `json:"segments,omitempty"`
	Fractions    string            `json:"fractions,omitempty"`
	SR           string            `json:"sr,omitempty"`
	Measurements []ManifestMeasure `json:"measurements,omitempty"`
	Findings     []ManifestFinding `json:"findings,omitempty"`
	Triage       string            `json:"triage,omitempty"`
	Extra        map[string]any    `json:"extra,omitempty"`
}

// ManifestMeasure is one measurement the SR must hold.
type ManifestMeasure struct {
	Label   string  `json:"label"`
	Meaning string  `json:"meaning"`
	Unit    string  `json:"unit"`
	Value   float64 `json:"value"`
}

// ManifestFinding is one qualitative evaluation the SR must hold.
type ManifestFinding struct {
	Label   string `json:"label"`
	Present bool   `json:"present"`
}

// Result is what the checker found.
type Result struct {
	Errors  []string       `json:"errors"`
	Checked map[string]any `json:"checked"`
}

// Highdicom runs scripts/check_dicom_outputs.py on m.
func Highdicom(t testing.TB, m Manifest) Result {
	t.Helper()
	py := tool(t, filepath.Join(root(), ".venv", "bin", "python"), "the project virtualenv")
	f := filepath.Join(t.TempDir(), "manifest.json")
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, filepath.Join(root(), "scripts", "check_dicom_outputs.py"), f)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("check_dicom_outputs.py: %v\n%s", err, out)
	}
	var r Result
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("check_dicom_outputs.py printed %q: %v", out, err)
	}
	return r
}

// HighdicomMultiFrame checks a SEG of one multi-frame source instance with
// scripts/check_dicom_outputs.py's multi-frame mode: the SEG frames must
// reference source frame numbers whose Plane Positions carry the labelled
// voxels of vol (in volume order, sorted along the slice normal).
func HighdicomMultiFrame(t testing.TB, source, seg string, vol []uint8, dims [3]int) Result {
	t.Helper()
	dir := t.TempDir()
	npy := filepath.Join(dir, "vol.npy")
	f, err := os.Create(npy)
	if err != nil {
		t.Fatal(err)
	}
	if err := tensor.WriteNpy(f, &tensor.Tensor{DType: tensor.Uint8, Shape: []int64{int64(dims[0]), int64(dims[1]), int64(dims[2])}, Data: vol}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return Highdicom(t, Manifest{Source: []string{source}, SEG: seg, TruthLabels: npy, Extra: map[string]any{"multiframe": true}})
}
