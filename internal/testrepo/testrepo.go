// Package testrepo writes model repositories for tests: real bundle.yaml
// files and real ONNX graphs from internal/onnxbuild.
package testrepo

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/voxserve/voxserve/internal/onnxbuild"
)

// Bundle is one model folder to write.
type Bundle struct {
	Name string
	YAML string
	// Versions maps a version number to its ONNX bytes.
	Versions map[int64][]byte
}

// Write creates the bundles under a new temporary repository and returns it.
func Write(t testing.TB, bundles ...Bundle) string {
	t.Helper()
	repo := t.TempDir()
	for _, b := range bundles {
		Add(t, repo, b)
	}
	return repo
}

// Add writes one bundle into repo.
func Add(t testing.TB, repo string, b Bundle) {
	t.Helper()
	dir := filepath.Join(repo, b.Name)
	must(t, os.MkdirAll(dir, 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "bundle.yaml"), []byte(b.YAML), 0o644))
	for v, onnx := range b.Versions {
		vd := filepath.Join(dir, strconv.FormatInt(v, 10))
		must(t, os.MkdirAll(vd, 0o755))
		must(t, os.WriteFile(filepath.Join(vd, "model.onnx"), onnx, 0o644))
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// AffineYAML declares the onnxbuild.Affine model over [batch, 2, 3].
const AffineYAML = `name: affine
task: segmentation
inputs:
  - name: x
    data_type: float32
    dims: [2, 3]
outputs:
  - name: y
    data_type: float32
    dims: [2, 3]
    kind: tensor
max_batch_size: 4
instance_count: 1
queue:
  max_queue_size: 4
`

// Affine is a bundle computing y = 2x + 1 over [batch, 2, 3].
func Affine() Bundle {
	return Bundle{Name: "affine", YAML: AffineYAML, Versions: map[int64][]byte{
		1: onnxbuild.Affine([]int64{2, 3}, 2, 1).Marshal(),
	}}
}

// HyperdensityYAML declares onnxbuild.Hyperdensity as the demo bundle does.
const HyperdensityYAML = `name: hyperdensity
task: both
modalities: [CT]
inputs:
  - name: image
    data_type: float32
    dims: [1, -1, -1, -1]
outputs:
  - name: probability_map
    data_type: float32
    dims: [1, -1, -1, -1]
    kind: mask
    labels:
      - name: hyperdense
        threshold: 0.5
  - name: score
    data_type: float32
    dims: [1]
    kind: scores
    labels:
      - name: hyperdense region
        code: {scheme: SCT, value: "50960005", meaning: Hemorrhage}
        threshold: 0.5
max_batch_size: 8
`

// Hyperdensity is the demo model as a bundle with one version.
func Hyperdensity() Bundle {
	return Bundle{Name: "hyperdensity", YAML: HyperdensityYAML, Versions: map[int64][]byte{
		1: onnxbuild.Hyperdensity(60, 5).Marshal(),
	}}
}

// TissueYAML declares onnxbuild.Tissue3: a softmax segmentation with a
// background class.
const TissueYAML = `name: tissue
task: segmentation
modalities: [CT]
inputs:
  - name: image
    data_type: float32
    dims: [1, -1, -1, -1]
outputs:
  - name: logits
    data_type: float32
    dims: [3, -1, -1, -1]
    kind: mask
    activation: softmax
    labels:
      - {name: background, background: true}
      - {name: blood}
      - {name: bone}
    measurements:
      - {name: volume, type: volume, label: blood}
max_batch_size: 1
`

// Tissue is onnxbuild.Tissue3 (blood at 50 HU, bone at 300) as a bundle.
func Tissue() Bundle {
	return Bundle{Name: "tissue", YAML: TissueYAML, Versions: map[int64][]byte{
		1: onnxbuild.Tissue3(50, 300).Marshal(),
	}}
}

// SlowYAML declares onnxbuild.MatMulChain: its run time grows with n^3, so
// tests can hold a request in flight for as long as they need.
const SlowYAML = `name: slow
task: segmentation
inputs:
  - name: x
    data_type: float32
    dims: [-1, -1]
outputs:
  - name: y
    data_type: float32
    dims: [-1, -1]
    kind: tensor
max_batch_size: 1
instance_count: 1
queue:
  max_queue_size: 2
execution:
  intra_op_threads: 1
`

// Slow is a bundle whose requests take time: k chained n x n matmuls.
func Slow(k int) Bundle {
	return Bundle{Name: "slow", YAML: SlowYAML, Versions: map[int64][]byte{1: onnxbuild.MatMulChain(k).Marshal()}}
}
