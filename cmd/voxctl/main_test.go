package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/dicom"
	"github.com/voxserve/voxserve/dicom/dicomwrite"
	"github.com/voxserve/voxserve/engine"
	"github.com/voxserve/voxserve/internal/testrepo"
	"github.com/voxserve/voxserve/server"
	"github.com/voxserve/voxserve/tensor"
)

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

func runCLI(args ...string) (string, int, error) {
	var out bytes.Buffer
	err := run(args, &out)
	return out.String(), exitCode(err), err
}

func writeNpy(t *testing.T, tt *tensor.Tensor) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "in.npy")
	f, err := os.Create(p)
	require.NoError(t, err)
	require.NoError(t, tensor.WriteNpy(f, tt))
	require.NoError(t, f.Close())
	return p
}

// serve starts a real server on loopback over repo.
func serve(t *testing.T, repo string) string {
	return serveWith(t, repo, server.Options{})
}

func serveWith(t *testing.T, repo string, opts server.Options) string {
	t.Helper()
	require.NoError(t, engine.Init(""))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := engine.NewRegistry(repo, log)
	require.NoError(t, reg.LoadAll())
	opts.Logger = log
	srv := server.New(reg, opts)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, lis, nil); close(done) }()
	t.Cleanup(func() { cancel(); <-done; reg.Close() })
	return lis.Addr().String()
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"infer"},
		{"infer", "--model", "x"},
		{"infer", "--model", "x", "--input", "a.npy", "--volume", "b.npy"},
		{"infer", "--model", "x", "--input", "a.npy", "--priority", "urgent"},
		{"infer", "--nope"},
		{"health"},
		{"load", "--addr", "127.0.0.1:1"},
		{"bundle"},
		{"bundle", "validate"},
	} {
		_, code, err := runCLI(args...)
		assert.Equal(t, 2, code, "%v: %v", args, err)
	}
}

func TestInferInProcessKnownInput(t *testing.T) {
	// The hyperdensity demo on a 1x2x2 volume: p = sigmoid((HU-60)/5).
	in := writeNpy(t, tensor.FromFloat32("", []int64{1, 2, 2}, []float32{0, 60, 100, -1000}))
	out, code, err := runCLI("infer", "--model", "hyperdensity", "--volume", in, "--modality", "CT",
		"--model-repository", "../../models", "--json", "--tensors")
	require.NoError(t, err, out)
	assert.Equal(t, 0, code)
	var resp struct {
		Findings []struct {
			Label       string
			Probability float64
			Present     bool
		}
	}
	require.NoError(t, json.Unmarshal([]byte(out), &resp))
	require.Len(t, resp.Findings, 1)
	assert.InDelta(t, 0.99966454, resp.Findings[0].Probability, 1e-6) // sigmoid(8)
	assert.True(t, resp.Findings[0].Present)

	out, _, err = runCLI("infer", "--model", "hyperdensity", "--volume", in, "--model-repository", "../../models")
	require.NoError(t, err)
	assert.Contains(t, out, "hyperdense region")
	assert.Contains(t, out, "PRESENT")
	assert.Contains(t, out, "mask probability_map [1 2 2]: hyperdense 2 voxels")
	assert.Contains(t, out, "timings:")
	assert.Contains(t, out, "stages: prepare ")

	// --repeat: every run's timings, then the last answer in full.
	out, _, err = runCLI("infer", "--model", "hyperdensity", "--volume", in, "--model-repository", "../../models", "--repeat", "3")
	require.NoError(t, err)
	assert.Equal(t, 3, strings.Count(out, "timings:"), out)
	assert.Contains(t, out, "run 2 of 3\ntimings:")
	assert.Equal(t, 1, strings.Count(out, "hyperdense region"), out)
	_, code, _ = runCLI("infer", "--model", "hyperdensity", "--volume", in, "--model-repository", "../../models", "--repeat", "0")
	assert.Equal(t, 2, code)
}

func TestAgainstServer(t *testing.T) {
	b := testrepo.Affine()
	b.Versions[2] = b.Versions[1]
	addr := serve(t, testrepo.Write(t, b))

	out, code, err := runCLI("models", "--addr", addr)
	require.NoError(t, err)
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "affine")
	assert.Contains(t, out, "x float32[?,2,3]")

	out, _, err = runCLI("health", "--addr", addr)
	require.NoError(t, err)
	assert.Contains(t, out, "SERVING")
	_, code, _ = runCLI("health", "--addr", addr, "--model", "nope")
	assert.Equal(t, 1, code)

	dir := t.TempDir()
	in := writeNpy(t, tensor.FromFloat32("", []int64{1, 2, 3}, []float32{0, 1, 2, 3, 4, 5}))
	out, _, err = runCLI("infer", "--addr", addr, "--model", "affine", "--input", in, "--tensors", "--output-dir", dir)
	require.NoError(t, err)
	assert.Contains(t, out, "tensor y float32[1,2,3] [1 3 5 7 9 11]")
	f, err := os.Open(filepath.Join(dir, "y.npy"))
	require.NoError(t, err)
	defer f.Close()
	y, err := tensor.ReadNpy(f, 0)
	require.NoError(t, err)
	v, _ := y.Float32s()
	assert.Equal(t, []float32{1, 3, 5, 7, 9, 11}, v)

	// A failed request exits 1 with the gRPC code.
	bad := writeNpy(t, tensor.FromFloat32("", []int64{1, 6}, make([]float32, 6)))
	_, code, err = runCLI("infer", "--addr", addr, "--model", "affine", "--input", bad)
	assert.Equal(t, 1, code)
	assert.Contains(t, describe(err), "InvalidArgument: input \"x\": shape [1,6] has 2 axes")
	_, code, _ = runCLI("infer", "--addr", addr, "--model", "affine", "--input", "/nonexistent.npy")
	assert.Equal(t, 1, code)

	out, _, err = runCLI("load", "affine", "--version", "1", "--addr", addr)
	require.NoError(t, err)
	assert.Contains(t, out, "loaded affine version 1 on cpu")
	out, _, err = runCLI("unload", "affine", "--addr", addr)
	require.NoError(t, err)
	assert.Contains(t, out, "unloaded affine versions 1")
	_, code, err = runCLI("unload", "affine", "--addr", addr)
	assert.Equal(t, 1, code)
	assert.Contains(t, describe(err), "NotFound")
}

func TestBundleValidate(t *testing.T) {
	out, code, err := runCLI("bundle", "validate", "../../models/hyperdensity")
	require.NoError(t, err)
	assert.Equal(t, 0, code)
	assert.Contains(t, out, `bundle "hyperdensity" is valid (versions [1])`)

	b := testrepo.Affine()
	b.YAML = b.YAML + "bogus: true\n"
	repo := testrepo.Write(t, b)
	_, code, err = runCLI("bundle", "validate", filepath.Join(repo, "affine"))
	assert.Equal(t, 1, code)
	assert.Contains(t, err.Error(), "field bogus not found")

	out, code, _ = runCLI("bundle", "validate", "--json", filepath.Join(repo, "affine"))
	assert.Equal(t, 1, code)
	var rep map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &rep))
	assert.Equal(t, false, rep["valid"])
}

func TestInspect(t *testing.T) {
	src := dicomwrite.Series{Rows: 4, Cols: 3, Slices: 3, Spacing: [3]float64{0.5, 0.5, 2}, Orientation: [6]float64{1, 0, 0, 0, 1, 0},
		Slope: 1, Intercept: -1024, Modality: "CT", BodyPart: "HEAD", StudyUID: "1.2.3", SeriesUID: "1.2.3.4",
		Value: func(i, j, k int) int32 { return int32(1024 + 10*k) }}
	src.Slices = 5
	files, err := src.Encode()
	require.NoError(t, err)
	dir := t.TempDir()
	for i, f := range files {
		if i == 2 {
			f = f[:len(f)-10] // truncated in transfer
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("%d.dcm", i)), f, 0o644))
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not dicom"), 0o644))

	out, code, err := runCLI("inspect", "--json", dir)
	require.NoError(t, err, out)
	assert.Equal(t, 0, code)
	var rep inspectReport
	require.NoError(t, json.Unmarshal([]byte(out), &rep))
	require.Len(t, rep.Series, 1)
	s := rep.Series[0]
	assert.Equal(t, "1.2.3.4", s.SeriesInstanceUID)
	assert.Equal(t, [3]int64{4, 4, 3}, s.Dims) // the broken slice is left out ...
	assert.Equal(t, 0.0, s.Min)
	assert.Equal(t, 40.0, s.Max)
	assert.Len(t, rep.Errors, 1) // ... and reported
	assert.Contains(t, rep.Errors[0], "2.dcm: not a readable DICOM file")
	assert.Equal(t, []dicom.Skipped{{Source: filepath.Join(dir, "notes.txt"), Reason: "not a DICOM file"}}, rep.Skipped)
	assert.Contains(t, s.Problems[0], "1 missing slices")

	_, code, _ = runCLI("inspect", t.TempDir())
	assert.Equal(t, 1, code)
}

// TestInspectPydicomSet runs inspect over pydicom's whole test-file set:
// every file gets a series, a skip reason or one error line.
func TestInspectPydicomSet(t *testing.T) {
	py, _ := filepath.Abs("../../.venv/bin/python")
	if _, err := os.Stat(py); err != nil {
		if os.Getenv("VOXSERVE_REQUIRE_PYTHON") != "" {
			t.Fatal("the project virtualenv is missing; run make test")
		}
		t.Skip("no .venv")
	}
	dirOut, err := exec.Command(py, "-c", "import os, pydicom; print(os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files'))").Output()
	require.NoError(t, err)
	dir := strings.TrimSpace(string(dirOut))
	out, code, err := runCLI("inspect", "--json", dir)
	require.NoError(t, err)
	assert.Equal(t, 0, code)
	var rep inspectReport
	require.NoError(t, json.Unmarshal([]byte(out), &rep))
	files := 0
	require.NoError(t, filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files++
		}
		return err
	}))
	accounted := len(rep.Skipped) + len(rep.Errors)
	for _, s := range rep.Series {
		accounted += s.Instances
	}
	// Series errors may cover several files; each file is accounted at most once.
	assert.LessOrEqual(t, accounted, files)
	assert.GreaterOrEqual(t, len(rep.Series), 10)
	for _, e := range rep.Errors {
		assert.NotContains(t, e, "\n")
		assert.NotContains(t, e, "goroutine")
	}
}

func TestInferDICOMFolder(t *testing.T) {
	src := dicomwrite.Series{Rows: 8, Cols: 8, Slices: 4, Spacing: [3]float64{0.5, 0.5, 2}, Orientation: [6]float64{1, 0, 0, 0, 1, 0},
		Slope: 1, Intercept: -1024, Modality: "CT", BodyPart: "HEAD", StudyUID: "1.2.3", SeriesUID: "1.2.3.5",
		Value: func(i, j, k int) int32 {
			if k == 2 && i < 3 && j < 2 {
				return 1024 + 75
			}
			return 1024 + 30
		}}
	files, err := src.Encode()
	require.NoError(t, err)
	dir := t.TempDir()
	for i, f := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("%d.dcm", i)), f, 0o644))
	}
	out, code, err := runCLI("infer", "--model", "hyperdensity", "--dicom", dir, "--model-repository", "../../models")
	require.NoError(t, err, out)
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "PRESENT")
	assert.Contains(t, out, "mask probability_map [4 8 8]: hyperdense 6 voxels")
}

func TestPhantomCommand(t *testing.T) {
	dir := t.TempDir()
	out, code, err := runCLI("phantom", "--kind", "head-ct", "--out", dir, "--seed", "7", "--count", "2", "--matrix", "48", "--slice-thickness", "5", "--quiet")
	require.NoError(t, err, out)
	assert.Equal(t, 0, code)
	for _, s := range []string{"head-ct-000007", "head-ct-000008"} {
		for _, f := range []string{"IM0000.dcm", "labels.npy", "truth.json"} {
			_, err := os.Stat(filepath.Join(dir, s, f))
			assert.NoError(t, err, "%s/%s", s, f)
		}
	}
	// The written study reads back and serves.
	out, _, err = runCLI("inspect", "--json", filepath.Join(dir, "head-ct-000007"))
	require.NoError(t, err)
	assert.Contains(t, out, `"modality": "CT"`)
	assert.Contains(t, out, "labels.npy") // listed as skipped: not DICOM
	out, _, err = runCLI("infer", "--model", "hyperdensity", "--dicom", filepath.Join(dir, "head-ct-000007"), "--model-repository", "../../models")
	require.NoError(t, err)
	assert.Contains(t, out, "hyperdense region")
	// ... and writes the DICOM SR, the SEG and the findings document.
	res := t.TempDir()
	out, code, err = runCLI("infer", "--model", "hyperdensity", "--dicom", filepath.Join(dir, "head-ct-000007"), "--model-repository", "../../models",
		"--sr", filepath.Join(res, "sr.dcm"), "--seg", filepath.Join(res, "seg.dcm"), "--json", filepath.Join(res, "findings.json"))
	require.NoError(t, err, out)
	assert.Equal(t, 0, code)
	for _, f := range []string{"sr.dcm", "seg.dcm"} {
		b, err := os.ReadFile(filepath.Join(res, f))
		require.NoError(t, err)
		assert.Equal(t, "DICM", string(b[128:132]), f)
	}
	doc, err := os.ReadFile(filepath.Join(res, "findings.json"))
	require.NoError(t, err)
	var fd map[string]any
	require.NoError(t, json.Unmarshal(doc, &fd))
	assert.Equal(t, "voxserve.findings/v1", fd["schema"])
	assert.Equal(t, "hyperdensity", fd["model"].(map[string]any)["name"])

	_, code, _ = runCLI("phantom", "--kind", "knee-mr", "--out", dir)
	assert.Equal(t, 2, code)
	_, code, _ = runCLI("phantom", "--kind", "head-ct")
	assert.Equal(t, 2, code)
}

// The evaluation path, smoke-tested on a few phantoms: the demo model on
// head CT (and the ich bundle when models/ holds it).
func TestEvalSmoke(t *testing.T) {
	dir := t.TempDir()
	_, _, err := runCLI("phantom", "--kind", "head-ct", "--out", dir, "--seed", "300000", "--count", "3", "--matrix", "64", "--slice-thickness", "5", "--positive-fraction", "0.5", "--quiet")
	require.NoError(t, err)
	cases, _ := filepath.Glob(filepath.Join(dir, "head-ct-*"))
	for _, model := range []string{"hyperdensity", "ich"} {
		if _, err := os.Stat(filepath.Join("../../models", model, "1", "model.onnx")); err != nil {
			continue
		}
		out := t.TempDir()
		md, code, err := runCLI(append([]string{"eval", "--model", model, "--model-repository", "../../models", "--out", out, "--bootstrap", "50"}, cases...)...)
		require.NoError(t, err, md)
		assert.Equal(t, 0, code)
		assert.Contains(t, md, "# Evaluation: "+model)
		assert.Contains(t, md, "## Detection")
		raw, err := os.ReadFile(filepath.Join(out, "report.json"))
		require.NoError(t, err)
		var rep EvalReport
		require.NoError(t, json.Unmarshal(raw, &rep))
		assert.Equal(t, 3, rep.Cases)
		assert.Equal(t, [2]uint64{300000, 300002}, rep.Seeds)
		require.NotNil(t, rep.Detection)
	}
}

// The pneumothorax and psoas reference bundles on fixed seeds, through the
// evaluation path (DICOM in, findings out): small studies, seconds.
func TestReferenceBundles(t *testing.T) {
	for _, tc := range []struct {
		model, kind string
		args        []string
		structures  []string
		measurement string
	}{
		{"pneumothorax", "chest-xr", []string{"--count", "4", "--positive-fraction", "0.5"},
			[]string{"pneumothorax", "right lung", "left lung"}, "pneumothorax pneumothorax area fraction (1)"},
		{"psoas", "abdomen-ct", []string{"--count", "1", "--matrix", "128", "--slice-thickness", "5"},
			[]string{"left psoas", "right psoas"}, "left psoas volume (mL)"},
	} {
		t.Run(tc.model, func(t *testing.T) {
			if _, err := os.Stat(filepath.Join("../../models", tc.model, "1", "model.onnx")); err != nil {
				t.Skip("models/" + tc.model + " not trained")
			}
			dir := t.TempDir()
			_, _, err := runCLI(append([]string{"phantom", "--kind", tc.kind, "--out", dir, "--seed", "300000", "--quiet"}, tc.args...)...)
			require.NoError(t, err)
			cases, _ := filepath.Glob(filepath.Join(dir, tc.kind+"-*"))
			out := t.TempDir()
			md, code, err := runCLI(append([]string{"eval", "--model", tc.model, "--model-repository", "../../models", "--out", out, "--bootstrap", "20"}, cases...)...)
			require.NoError(t, err, md)
			assert.Equal(t, 0, code)
			raw, err := os.ReadFile(filepath.Join(out, "report.json"))
			require.NoError(t, err)
			var rep EvalReport
			require.NoError(t, json.Unmarshal(raw, &rep))
			assert.Empty(t, rep.Failures)
			for _, s := range tc.structures {
				if assert.Contains(t, rep.Dice, s) {
					assert.Greater(t, rep.Dice[s].Mean, 0.8, s)
				}
			}
			if assert.Contains(t, rep.Measurements, tc.measurement) {
				assert.Less(t, rep.Measurements[tc.measurement].MedianRel, 0.25)
			}
		})
	}
}
