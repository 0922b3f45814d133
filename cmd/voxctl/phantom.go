package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/voxserve/voxserve/phantom"
)

func cmdPhantom(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("phantom", flag.ContinueOnError)
	kind := fs.String("kind", "", "head-ct, chest-xr or abdomen-ct")
	dir := fs.String("out", "", "output folder: one sub-folder per case")
	seed := fs.Uint64("seed", 1, "seed of the first case; case i uses seed+i")
	count := fs.Int("count", 1, "number of cases")
	posFrac := fs.Float64("positive-fraction", 0.5, "fraction of positive cases (hemorrhage, pneumothorax)")
	matrix := fs.Int("matrix", 0, "in-plane matrix (default 256 for CT, 512 for radiographs)")
	thick := fs.Float64("slice-thickness", 0, "CT slice thickness in mm (default: drawn from 0.625-5 mm)")
	quiet := fs.Bool("quiet", false, "no progress lines")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageErr("phantom: unexpected argument %q", pos[0])
	}
	if *dir == "" || *kind == "" {
		return usageErr("phantom: --kind and --out are required")
	}
	if *count < 1 || *count > 100000 {
		return usageErr("phantom: --count must be between 1 and 100000")
	}
	if *posFrac < 0 || *posFrac > 1 {
		return usageErr("phantom: --positive-fraction must be between 0 and 1")
	}
	k := phantom.Kind(*kind)
	valid := false
	for _, x := range phantom.Kinds() {
		valid = valid || x == k
	}
	if !valid {
		return usageErr("phantom: --kind %q is not head-ct, chest-xr or abdomen-ct", *kind)
	}
	if *matrix != 0 && (*matrix < 16 || *matrix > 2048) {
		return usageErr("phantom: --matrix must be between 16 and 2048")
	}
	for i := 0; i < *count; i++ {
		s := *seed + uint64(i)
		opts := phantom.Options{Seed: s, PositiveFraction: *posFrac, Matrix: *matrix, SliceThickness: *thick}
		if *posFrac == 0 {
			no := false
			opts.Positive = &no
		}
		c, err := phantom.Generate(k, opts)
		if err != nil {
			return &exitError{1, err}
		}
		caseDir := filepath.Join(*dir, fmt.Sprintf("%s-%06d", k, s))
		if err := c.Write(caseDir); err != nil {
			return &exitError{1, err}
		}
		if !*quiet {
			state := "negative"
			if c.Truth.Positive {
				state = "positive"
			}
			fmt.Fprintf(os.Stderr, "[%d/%d] %s: %s, %d slices of %dx%d, %.3g mm\n", i+1, *count, caseDir, state,
				c.Truth.Dims[0], c.Truth.Dims[2], c.Truth.Dims[1], c.Truth.SliceThickness)
		}
	}
	fmt.Fprintf(out, "wrote %d %s case(s) to %s\n", *count, k, *dir)
	return nil
}
