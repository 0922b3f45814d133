package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/voxserve/voxserve/bundle/monai"
	"github.com/voxserve/voxserve/engine"
)

// cmdImportMONAI imports a MONAI bundle into a model repository and checks
// the result as `bundle validate` does: the wrapped model against its
// declaration, in ONNX Runtime.
func cmdImportMONAI(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("bundle import-monai", flag.ContinueOnError)
	repo := fs.String("out", "", "model repository to write the bundle into")
	name := fs.String("name", "", "bundle name (default: the MONAI bundle's)")
	version := fs.Int64("version", 1, "version folder to write")
	modality := fs.String("modality", "", "DICOM modality the model takes (default: the MONAI metadata's)")
	ortLib := fs.String("onnxruntime-lib", "", "ONNX Runtime library")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *repo == "" {
		return usageErr("bundle import-monai: usage is `voxctl bundle import-monai SRC --out REPO`")
	}
	dir, caveats, err := monai.Import(pos[0], *repo, monai.Options{Name: *name, Version: *version, Modality: *modality})
	if err != nil {
		return &exitError{1, fmt.Errorf("import-monai: %w", err)}
	}
	if err := engine.Init(*ortLib); err != nil {
		return err
	}
	if _, err := engine.Validate(dir); err != nil {
		return &exitError{1, fmt.Errorf("import-monai: %s was written but does not load: %w", dir, err)}
	}
	fmt.Fprintf(out, "imported %s into %s: check its bundle.yaml (thresholds, codes, measurements) before serving it\n", pos[0], dir)
	for _, c := range caveats {
		fmt.Fprintf(out, "note: %s\n", c)
	}
	return nil
}
