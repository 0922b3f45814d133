package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/dicom"
	"github.com/voxserve/voxserve/preprocess"
	"github.com/voxserve/voxserve/tensor"
)

// cmdPrepare runs a bundle's declared preprocessing on studies and writes
// the model inputs (and label maps carried through the same geometry) as
// .npy: training data made by the serving code itself, so that what a model
// learns on is exactly what the server will feed it.
func cmdPrepare(args []string, out io.Writer) error {
	flags := flag.NewFlagSet("prepare", flag.ContinueOnError)
	bundleDir := flags.String("bundle", "", "bundle folder (its bundle.yaml declares the preprocessing)")
	dir := flags.String("out", "", "output folder")
	cases, err := parse(flags, args)
	if err != nil {
		return err
	}
	if *bundleDir == "" || *dir == "" || len(cases) == 0 {
		return usageErr("prepare: usage is `voxctl prepare --bundle DIR --out DIR CASE_DIR...`")
	}
	file := filepath.Join(*bundleDir, bundle.FileName)
	raw, err := os.ReadFile(file)
	if err != nil {
		return &exitError{1, err}
	}
	spec, err := bundle.Parse(file, raw)
	if err != nil {
		return &exitError{1, err}
	}
	if spec.Preprocessing == nil {
		return &exitError{1, fmt.Errorf("%s declares no preprocessing", file)}
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return &exitError{1, err}
	}
	for i, c := range cases {
		name := filepath.Base(filepath.Clean(c))
		p, err := prepareCase(spec, c)
		if err != nil {
			return &exitError{1, fmt.Errorf("%s: %w", c, err)}
		}
		if err := writeNpyFile(filepath.Join(*dir, name+".input.npy"), p.Input); err != nil {
			return &exitError{1, err}
		}
		labels := filepath.Join(c, "labels.npy")
		if f, err := os.Open(labels); err == nil {
			lab, err := tensor.ReadNpy(f, 0)
			f.Close()
			if err != nil {
				return &exitError{1, fmt.Errorf("%s: %w", labels, err)}
			}
			lt, err := p.PrepareLabels(lab.Data)
			if err != nil {
				return &exitError{1, fmt.Errorf("%s: %w", labels, err)}
			}
			if err := writeNpyFile(filepath.Join(*dir, name+".labels.npy"), lt); err != nil {
				return &exitError{1, err}
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return &exitError{1, err}
		}
		fmt.Fprintf(out, "[%d/%d] %s: input %s\n", i+1, len(cases), name, tensor.ShapeString(p.Input.Shape))
	}
	return nil
}

func prepareCase(spec *bundle.Spec, dir string) (*preprocess.Prepared, error) {
	inputs, _, err := readStudy(dir)
	if err != nil {
		return nil, err
	}
	series, _, err := dicom.ReadStudy(inputs, dicom.Options{})
	if err != nil {
		return nil, err
	}
	if len(series) != 1 {
		return nil, fmt.Errorf("%d image series; want one", len(series))
	}
	return preprocess.Prepare(series[0].Volume, spec.PreprocessSpec(), spec.Inputs[0].Name)
}

func writeNpyFile(path string, t *tensor.Tensor) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := tensor.WriteNpy(f, t); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
