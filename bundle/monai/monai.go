// Package monai imports a MONAI bundle (configs/metadata.json,
// configs/inference.json and an ONNX export in models/model.onnx) as a
// voxserve bundle: the preprocessing its inference config declares becomes
// bundle.yaml's, and the model is wrapped (onnxbuild.Reorient) to take
// voxserve's [batch, channels, z, y, x] LPS patches instead of MONAI's
// [batch, channels, x, y, z] RAS ones.
//
// Only what voxserve reproduces exactly is imported: a transform it cannot
// reproduce is refused by name rather than dropped, since a model fed
// differently prepared input gives wrong answers quietly.
package monai

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/internal/onnxbuild"
)

// Options name the bundle and fill what a MONAI bundle may not say.
type Options struct {
	Name     string // default: the MONAI bundle's name, made a valid bundle name
	Version  int64  // default 1
	Modality string // default: metadata's inputs.image.modality
}

type metadata struct {
	Name        string `json:"name"`
	Version     string `json:"version"`
	Description string `json:"description"`
	IntendedUse string `json:"intended_use"`
	DataSource  string `json:"data_source"`
	Copyright   string `json:"copyright"`
	License     string `json:"license"`
	Network     struct {
		Inputs  map[string]tensorFormat `json:"inputs"`
		Outputs map[string]tensorFormat `json:"outputs"`
	} `json:"network_data_format"`
}

type tensorFormat struct {
	Modality    string            `json:"modality"`
	NumChannels int               `json:"num_channels"`
	ChannelDef  map[string]string `json:"channel_def"`
}

// Import writes the bundle into repo/<name>/ and returns its folder, and
// the differences from MONAI's inference that remain (to tell the user).
func Import(src, repo string, opt Options) (string, []string, error) {
	var md metadata
	if err := readJSON(filepath.Join(src, "configs", "metadata.json"), &md); err != nil {
		return "", nil, err
	}
	var cfg map[string]any
	if err := readJSON(filepath.Join(src, "configs", "inference.json"), &cfg); err != nil {
		return "", nil, err
	}
	onnx, err := os.ReadFile(filepath.Join(src, "models", "model.onnx"))
	if err != nil {
		return "", nil, fmt.Errorf("%w (export the network to ONNX first, e.g. with MONAI's `python -m monai.bundle ckpt_export` or torch.onnx.export)", err)
	}
	ins, outs, err := onnxbuild.IONames(onnx)
	if err != nil {
		return "", nil, err
	}
	if len(ins) != 1 || len(outs) != 1 {
		return "", nil, fmt.Errorf("models/model.onnx has inputs %v and outputs %v; one of each is supported", ins, outs)
	}
	p, err := plan(cfg)
	if err != nil {
		return "", nil, fmt.Errorf("configs/inference.json: %w", err)
	}

	name := opt.Name
	if name == "" {
		name = strings.Trim(regexp.MustCompile(`[^a-z0-9_.-]+`).ReplaceAllString(strings.ToLower(md.Name), "-"), "-.")
	}
	version := opt.Version
	if version == 0 {
		version = 1
	}
	in, out := md.Network.Inputs["image"], md.Network.Outputs["pred"]
	modality := opt.Modality
	if modality == "" {
		modality = strings.ToUpper(in.Modality)
	}
	if modality == "" {
		return "", nil, fmt.Errorf("configs/metadata.json names no modality (network_data_format.inputs.image.modality): give one")
	}
	inC := in.NumChannels
	if inC == 0 {
		inC = 1
	}
	labels, err := channelLabels(out)
	if err != nil {
		return "", nil, err
	}

	yaml := spec(md, p, name, modality, ins[0], outs[0], inC, labels, filepath.Base(src))
	if _, err := bundle.Parse(filepath.Join(name, bundle.FileName), []byte(yaml)); err != nil {
		return "", nil, fmt.Errorf("the bundle made of it does not validate: %w", err)
	}
	wrapped, err := onnxbuild.Reorient(onnx, ins, outs)
	if err != nil {
		return "", nil, err
	}
	dir := filepath.Join(repo, name)
	if err := os.MkdirAll(filepath.Join(dir, strconv.FormatInt(version, 10)), 0o755); err != nil {
		return "", nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, strconv.FormatInt(version, 10), "model.onnx"), wrapped, 0o644); err != nil {
		return "", nil, err
	}
	var caveats []string
	if p.blend != "" {
		caveats = append(caveats, fmt.Sprintf("MONAI blends overlapping patches with mode %q; voxserve with Gaussian weights (sigma = patch/8): outputs differ where patches overlap", p.blend))
	}
	return dir, caveats, os.WriteFile(filepath.Join(dir, bundle.FileName), []byte(yaml), 0o644)
}

// label is one output channel.
type label struct {
	name       string
	background bool
}

// channelLabels reads the output's channel_def ("0": "background", ...).
func channelLabels(out tensorFormat) ([]label, error) {
	if len(out.ChannelDef) == 0 {
		return nil, fmt.Errorf("configs/metadata.json: network_data_format.outputs.pred.channel_def is needed to name the labels")
	}
	n := len(out.ChannelDef)
	labels := make([]label, n)
	for k, v := range out.ChannelDef {
		i, err := strconv.Atoi(k)
		if err != nil || i < 0 || i >= n {
			return nil, fmt.Errorf("configs/metadata.json: channel_def key %q is not a channel 0..%d", k, n-1)
		}
		labels[i] = label{name: v, background: strings.EqualFold(v, "background")}
	}
	if out.NumChannels != 0 && out.NumChannels != n {
		return nil, fmt.Errorf("configs/metadata.json: %d output channels, channel_def names %d", out.NumChannels, n)
	}
	return labels, nil
}

// preparation is what inference.json says the model needs.
type preparation struct {
	spacing    []float64
	clip       []float64 // a_min, a_max, b_min, b_max
	zscore     bool
	roi        []int
	overlap    float64
	batch      int
	activation string
	// blend is the inferer's mode for overlapping patches: voxserve always
	// blends with Gaussian weights (sigma = patch/8, MONAI's gaussian with
	// its default sigma_scale 0.125); "" when the two agree.
	blend string
}

var ignored = map[string]bool{ // no-ops for voxserve's pipeline
	"LoadImaged": true, "LoadImage": true, "EnsureChannelFirstd": true, "EnsureChannelFirst": true,
	"AddChanneld": true, "AsChannelFirstd": true, "EnsureTyped": true, "EnsureType": true,
	"ToTensord": true, "ToTensor": true, "CastToTyped": true, "Compose": true,
	"AsDiscreted": true, "AsDiscrete": true, "Invertd": true, "SaveImaged": true, "SaveImage": true,
	"CopyItemsd": true, "ToDeviced": true,
}

func plan(cfg map[string]any) (*preparation, error) {
	p := &preparation{overlap: 0.25, batch: 4}
	ref := func(v any) any { // "@name" names a top-level entry
		if s, ok := v.(string); ok && strings.HasPrefix(s, "@") {
			return cfg[strings.TrimPrefix(s, "@")]
		}
		return v
	}
	var bad []string
	for _, part := range []string{"preprocessing", "postprocessing"} {
		for i, t := range transforms(ref(cfg[part]), ref) {
			target := strings.TrimPrefix(fmt.Sprint(t["_target_"]), "monai.transforms.")
			field := fmt.Sprintf("%s.transforms[%d] (%s)", part, i, target)
			num := func(k string) (float64, bool) { f, ok := ref(t[k]).(float64); return f, ok }
			switch target {
			case "Orientationd", "Orientation":
				if ax := fmt.Sprint(ref(t["axcodes"])); ax != "RAS" {
					bad = append(bad, fmt.Sprintf("%s: axcodes %q; voxserve wraps RAS models only", field, ax))
				}
			case "Spacingd", "Spacing":
				pix, ok := floats(ref(t["pixdim"]))
				if !ok || len(pix) != 3 {
					bad = append(bad, field+": pixdim must be three numbers")
				}
				p.spacing = pix
			case "ScaleIntensityRanged", "ScaleIntensityRange":
				a0, ok0 := num("a_min")
				a1, ok1 := num("a_max")
				b0, ok2 := num("b_min")
				b1, ok3 := num("b_max")
				if !(ok0 && ok1 && ok2 && ok3) {
					bad = append(bad, field+": a_min, a_max, b_min and b_max must be numbers")
				} else if c, _ := ref(t["clip"]).(bool); !c {
					bad = append(bad, field+": clip false; voxserve clips")
				}
				p.clip = []float64{a0, a1, b0, b1}
			case "NormalizeIntensityd", "NormalizeIntensity":
				if nz, _ := ref(t["nonzero"]).(bool); nz {
					bad = append(bad, field+": nonzero true; voxserve normalizes every voxel")
				}
				p.zscore = true
			case "Activationsd", "Activations":
				switch {
				case ref(t["softmax"]) == true:
					p.activation = "softmax"
				case ref(t["sigmoid"]) == true:
					p.activation = "sigmoid"
				}
			default:
				if !ignored[target] {
					bad = append(bad, field+": not a transform voxserve reproduces; the import would feed the model differently")
				}
			}
		}
	}
	inf, _ := ref(cfg["inferer"]).(map[string]any)
	if target := fmt.Sprint(inf["_target_"]); !strings.HasSuffix(target, "SlidingWindowInferer") {
		bad = append(bad, fmt.Sprintf("inferer: %s; voxserve runs a SlidingWindowInferer's patches", target))
	} else {
		roi, ok := floats(ref(inf["roi_size"]))
		if !ok || len(roi) != 3 {
			bad = append(bad, "inferer.roi_size must be three numbers")
		}
		for _, r := range roi {
			p.roi = append(p.roi, int(r))
		}
		if o, ok := ref(inf["overlap"]).(float64); ok {
			p.overlap = o
		}
		if b, ok := ref(inf["sw_batch_size"]).(float64); ok && b >= 1 {
			p.batch = int(b)
		}
		mode, _ := ref(inf["mode"]).(string)
		sigma, ok := ref(inf["sigma_scale"]).(float64)
		if mode != "gaussian" || (ok && sigma != 0.125) {
			if mode == "" {
				mode = "constant" // MONAI's default
			}
			p.blend = mode
		}
	}
	if p.activation == "" {
		bad = append(bad, "postprocessing: no Activationsd with softmax or sigmoid")
	}
	if p.clip != nil && p.zscore {
		bad = append(bad, "preprocessing: both ScaleIntensityRanged and NormalizeIntensityd")
	}
	if len(bad) > 0 {
		return nil, errors.New(strings.Join(bad, "; "))
	}
	return p, nil
}

// transforms lists a Compose's transforms (or a list of them).
func transforms(v any, ref func(any) any) []map[string]any {
	if m, ok := v.(map[string]any); ok {
		v = ref(m["transforms"])
	}
	list, _ := v.([]any)
	var out []map[string]any
	for _, x := range list {
		if m, ok := ref(x).(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

func floats(v any) ([]float64, bool) {
	list, ok := v.([]any)
	if !ok {
		return nil, false
	}
	out := make([]float64, len(list))
	for i, x := range list {
		f, ok := x.(float64)
		if !ok {
			return nil, false
		}
		out[i] = f
	}
	return out, true
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func q(s string) string { b, _ := json.Marshal(s); return string(b) } // a YAML double-quoted scalar

func nums[T int | float64](v []T) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprint(x)
	}
	return "[" + strings.Join(s, ", ") + "]"
}

// spec writes bundle.yaml.
func spec(md metadata, p *preparation, name, modality, in, out string, inC int, labels []label, from string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Imported from the MONAI bundle %s (%s %s) by voxctl bundle import-monai.\n", from, md.Name, md.Version)
	fmt.Fprintf(&b, "# The model is wrapped to take LPS [z, y, x] patches; read its MONAI documentation\n# before use: voxserve reproduces the declared transforms, not the training.\n")
	if p.blend != "" {
		fmt.Fprintf(&b, "# MONAI blends overlapping patches with mode %q; voxserve with Gaussian weights\n# (sigma = patch/8): outputs differ where patches overlap.\n", p.blend)
	}
	fmt.Fprintf(&b, "name: %s\n", name)
	if md.Description != "" {
		fmt.Fprintf(&b, "description: %s\n", q(md.Description))
	}
	fmt.Fprintf(&b, "task: segmentation\nmodalities: [%s]\n", modality)
	z, y, x := p.roi[2], p.roi[1], p.roi[0]
	fmt.Fprintf(&b, "inputs:\n  - name: %s\n    data_type: float32\n    dims: [%d, %d, %d, %d]\n", q(in), inC, z, y, x)
	b.WriteString("preprocessing:\n  orientation: LPS\n")
	if p.spacing != nil {
		fmt.Fprintf(&b, "  target_spacing: %s\n", nums(p.spacing))
	}
	switch {
	case p.clip != nil:
		fmt.Fprintf(&b, "  normalize: clip\n  clip: %s\n", nums(p.clip))
	case p.zscore:
		b.WriteString("  normalize: zscore\n")
	}
	fmt.Fprintf(&b, "  layout: patches\n  patch_size: %s\n  overlap: %g\n", nums(p.roi), p.overlap)
	fmt.Fprintf(&b, "outputs:\n  - name: %s\n    data_type: float32\n    dims: [%d, %d, %d, %d]\n    kind: mask\n    activation: %s\n    labels:\n",
		q(out), len(labels), z, y, x, p.activation)
	var measured []string
	for _, l := range labels {
		if l.background && p.activation == "softmax" {
			fmt.Fprintf(&b, "      - {name: %s, background: true}\n", q(l.name))
			continue
		}
		fmt.Fprintf(&b, "      - {name: %s}\n", q(l.name))
		measured = append(measured, l.name)
	}
	if len(measured) > 0 {
		b.WriteString("    measurements:\n")
		for _, l := range measured {
			fmt.Fprintf(&b, "      - {name: volume, type: volume, label: %s}\n", q(l))
		}
	}
	fmt.Fprintf(&b, "max_batch_size: %d\n", p.batch)
	use := md.IntendedUse
	if use == "" {
		use = "See the MONAI bundle's documentation."
	}
	license := md.License
	if license == "" {
		license = md.Copyright
	}
	fmt.Fprintf(&b, "provenance:\n  intended_use: %s\n  training_data: %s\n", q(use), q(strings.TrimSpace("MONAI bundle "+md.Name+" "+md.Version+". "+md.DataSource)))
	if license != "" {
		fmt.Fprintf(&b, "  license: %s\n", q(license))
	}
	return b.String()
}
