package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/voxserve/voxserve/evaluation"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
	"github.com/voxserve/voxserve/tensor"
)

// truthFile is the part of a phantom's truth.json that evaluation reads.
type truthFile struct {
	Seed         uint64            `json:"seed"`
	Positive     bool              `json:"positive"`
	Labels       map[string]string `json:"labels"`
	Measurements []struct {
		Name  string  `json:"name"`
		Label string  `json:"label"`
		Value float64 `json:"value"`
		Unit  string  `json:"unit"`
	} `json:"measurements"`
}

// EvalReport is what voxctl eval writes.
type EvalReport struct {
	Command      string                       `json:"command"`
	Date         time.Time                    `json:"date"`
	Model        string                       `json:"model"`
	Version      string                       `json:"version"`
	Cases        int                          `json:"cases"`
	Seeds        [2]uint64                    `json:"seeds"`
	Detection    *detection                   `json:"detection,omitempty"`
	Dice         map[string]diceSummary       `json:"dice,omitempty"`
	Measurements map[string]evaluation.Errors `json:"measurements,omitempty"`
	Failures     []string                     `json:"failures,omitempty"`
}

// detection scores a study-level finding against the truth.
type detection struct {
	Finding     string               `json:"finding"`
	AUC         float64              `json:"auc"`
	AUC95       [2]float64           `json:"auc_95ci"`
	Threshold   float64              `json:"threshold"`
	Confusion   evaluation.Confusion `json:"confusion"`
	Sensitivity float64              `json:"sensitivity"`
	Specificity float64              `json:"specificity"`
}

type diceSummary struct {
	N      int     `json:"n"`
	Mean   float64 `json:"mean"`
	Median float64 `json:"median"`
}

func cmdEval(args []string, out io.Writer) error {
	var c common
	fs := flag.NewFlagSet("eval", flag.ContinueOnError)
	c.register(fs, true)
	model := fs.String("model", "", "model name")
	dir := fs.String("out", "", "folder for report.json and report.md")
	boot := fs.Int("bootstrap", 1000, "bootstrap resamples for the AUC interval")
	cases, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *model == "" || len(cases) == 0 {
		return usageErr("eval: usage is `voxctl eval --model NAME [--out DIR] CASE_DIR...`")
	}
	conn, err := c.connect([]string{*model})
	if err != nil {
		return err
	}
	defer conn.Close()
	// The command as run, with the case folders summarised (they are the seeds).
	flagArgs := args[:len(args)-len(cases)]
	if len(cases) > 0 && len(args) >= len(cases) && args[len(args)-len(cases)] != cases[0] {
		flagArgs = args // flags after the cases: keep the line as given
	}
	rep := EvalReport{Command: fmt.Sprintf("voxctl eval %s <%d case folders: %s ...>", strings.Join(flagArgs, " "), len(cases), filepath.Dir(filepath.Clean(cases[0]))), Date: time.Now().UTC().Truncate(time.Second), Model: *model, Cases: len(cases)}
	var scores []float64
	var positive []bool
	var conf evaluation.Confusion
	threshold, finding := math.NaN(), ""
	dice := map[string][]float64{}
	type pair struct{ pred, truth []float64 }
	meas := map[string]*pair{}
	for i, cd := range cases {
		tr, labels, err := readTruth(cd)
		if err != nil {
			return &exitError{1, err}
		}
		if i == 0 || tr.Seed < rep.Seeds[0] {
			rep.Seeds[0] = tr.Seed
		}
		rep.Seeds[1] = max(rep.Seeds[1], tr.Seed)
		instances, _, err := readStudy(cd)
		if err != nil {
			return &exitError{1, err}
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		resp, err := conn.Inference.Infer(ctx, &pb.InferRequest{Model: *model, RequestId: filepath.Base(cd),
			Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_FINDINGS, pb.OutputKind_OUTPUT_KIND_MASK, pb.OutputKind_OUTPUT_KIND_MEASUREMENTS},
			Input:   &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: instanceBytes(instances)}}})
		cancel()
		if err != nil {
			rep.Failures = append(rep.Failures, fmt.Sprintf("%s: %s", filepath.Base(cd), describe(err)))
			continue
		}
		rep.Version = resp.GetVersion()
		if f := resp.GetFindings(); len(f) > 0 {
			finding, threshold = f[0].GetLabel(), f[0].GetThreshold()
			scores = append(scores, f[0].GetProbability())
			positive = append(positive, tr.Positive)
			conf.Add(f[0].GetPresent(), tr.Positive)
		}
		for _, m := range resp.GetMasks() {
			pred, err := inflate(m.GetDataZlib())
			if err != nil {
				return &exitError{1, err}
			}
			if len(pred) != len(labels) {
				return &exitError{1, fmt.Errorf("%s: mask %s has %d voxels, the truth %d", cd, m.GetOutput(), len(pred), len(labels))}
			}
			for li, name := range m.GetLabels() {
				for tv, tname := range tr.Labels {
					if strings.EqualFold(tname, name) {
						var v uint8
						fmt.Sscan(tv, &v)
						// Dice of an absent structure says nothing: score cases that have it.
						if count8(labels, v) > 0 {
							dice[name] = append(dice[name], evaluation.Dice(pred, uint8(li+1), labels, v))
						}
					}
				}
			}
		}
		for _, m := range resp.GetMeasurements() {
			for _, t := range tr.Measurements {
				if strings.EqualFold(t.Label, m.GetLabel()) && strings.EqualFold(t.Name, m.GetName()) && t.Value > 0 {
					key := t.Label + " " + t.Name + " (" + m.GetUnit() + ")"
					if meas[key] == nil {
						meas[key] = &pair{}
					}
					meas[key].pred = append(meas[key].pred, m.GetValue())
					meas[key].truth = append(meas[key].truth, t.Value)
				}
			}
		}
		fmt.Fprintf(os.Stderr, "\r[%d/%d] %s", i+1, len(cases), filepath.Base(cd))
	}
	fmt.Fprintln(os.Stderr)
	if len(scores) > 0 {
		rep.Detection = &detection{Finding: finding, AUC: evaluation.AUC(scores, positive), Threshold: threshold, Confusion: conf,
			Sensitivity: conf.Sensitivity(), Specificity: conf.Specificity()}
		rep.Detection.AUC95[0], rep.Detection.AUC95[1] = evaluation.BootstrapAUC(scores, positive, *boot, 1)
		// JSON has no NaN: an undefined figure (one class only) is written as -1.
		for _, x := range []*float64{&rep.Detection.AUC, &rep.Detection.AUC95[0], &rep.Detection.AUC95[1], &rep.Detection.Sensitivity, &rep.Detection.Specificity} {
			if math.IsNaN(*x) {
				*x = -1
			}
		}
	}
	if len(dice) > 0 {
		rep.Dice = map[string]diceSummary{}
		for k, v := range dice {
			sort.Float64s(v)
			sum := 0.0
			for _, x := range v {
				sum += x
			}
			rep.Dice[k] = diceSummary{N: len(v), Mean: sum / float64(len(v)), Median: v[len(v)/2]}
		}
	}
	if len(meas) > 0 {
		rep.Measurements = map[string]evaluation.Errors{}
		for k, p := range meas {
			rep.Measurements[k] = evaluation.Summarise(p.pred, p.truth)
		}
	}
	if *dir != "" {
		if err := writeEvalReport(*dir, &rep); err != nil {
			return &exitError{1, err}
		}
	}
	fmt.Fprint(out, evalMarkdown(&rep))
	if len(rep.Failures) > 0 {
		return &exitError{1, fmt.Errorf("%d of %d cases failed", len(rep.Failures), len(cases))}
	}
	return nil
}

func count8(v []uint8, x uint8) int {
	n := 0
	for _, y := range v {
		if y == x {
			n++
		}
	}
	return n
}

func readTruth(dir string) (*truthFile, []uint8, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "truth.json"))
	if err != nil {
		return nil, nil, err
	}
	var tr truthFile
	if err := json.Unmarshal(raw, &tr); err != nil {
		return nil, nil, fmt.Errorf("%s/truth.json: %w", dir, err)
	}
	f, err := os.Open(filepath.Join(dir, "labels.npy"))
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	lab, err := tensor.ReadNpy(f, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("%s/labels.npy: %w", dir, err)
	}
	return &tr, lab.Data, nil
}

func writeEvalReport(dir string, rep *EvalReport) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "report.md"), []byte(evalMarkdown(rep)), 0o644)
}

func evalMarkdown(r *EvalReport) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Evaluation: %s version %s\n\n", r.Model, r.Version)
	fmt.Fprintf(&b, "%d held-out phantom cases (seeds %d-%d), through the server (DICOM in, findings out). %s\n\n", r.Cases, r.Seeds[0], r.Seeds[1], r.Date.Format(time.RFC3339))
	fmt.Fprintf(&b, "Command: `%s`\n\n", r.Command)
	if d := r.Detection; d != nil {
		fmt.Fprintf(&b, "## Detection: %s\n\n", d.Finding)
		fmt.Fprintf(&b, "| AUC | 95%% CI (bootstrap) | threshold | sensitivity | specificity | TP | FP | TN | FN |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
		fmt.Fprintf(&b, "| %.4f | %.4f-%.4f | %.3f | %.3f | %.3f | %d | %d | %d | %d |\n\n", d.AUC, d.AUC95[0], d.AUC95[1], d.Threshold,
			d.Sensitivity, d.Specificity, d.Confusion.TP, d.Confusion.FP, d.Confusion.TN, d.Confusion.FN)
	}
	if len(r.Dice) > 0 {
		fmt.Fprintf(&b, "## Segmentation (Dice, cases where the structure exists)\n\n| structure | n | mean | median |\n| --- | --- | --- | --- |\n")
		for _, k := range sortedKeys(r.Dice) {
			d := r.Dice[k]
			fmt.Fprintf(&b, "| %s | %d | %.4f | %.4f |\n", k, d.N, d.Mean, d.Median)
		}
		b.WriteString("\n")
	}
	if len(r.Measurements) > 0 {
		fmt.Fprintf(&b, "## Measurements (cases with a true value > 0)\n\n| measurement | n | mean true | mean predicted | mean abs error | mean rel error | median rel error |\n| --- | --- | --- | --- | --- | --- | --- |\n")
		for _, k := range sortedKeys(r.Measurements) {
			e := r.Measurements[k]
			fmt.Fprintf(&b, "| %s | %d | %.3f | %.3f | %.3f | %.1f%% | %.1f%% |\n", k, e.N, e.MeanTrue, e.MeanPredicted, e.MeanAbs, 100*e.MeanRel, 100*e.MedianRel)
		}
		b.WriteString("\n")
	}
	for _, f := range r.Failures {
		fmt.Fprintf(&b, "- failed: %s\n", f)
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
