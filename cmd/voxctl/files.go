package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/voxserve/voxserve/dicom"
)

// readStudy reads the DICOM Part 10 files under dir, recursively, in name
// order. Other files (a phantom's labels.npy and truth.json, notes) are
// left behind rather than sent, judged by their first 132 bytes only, and
// counted in skipped.
func readStudy(dir string) (instances []dicom.Input, skipped int, err error) {
	var paths []string
	err = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			paths = append(paths, path)
		}
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	sort.Strings(paths)
	head := make([]byte, 132)
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, 0, err
		}
		n, _ := io.ReadFull(f, head)
		f.Close()
		if !dicom.IsDICOM(head[:n]) {
			skipped++
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, 0, err
		}
		instances = append(instances, dicom.Input{Source: p, Data: b})
	}
	if len(instances) == 0 {
		return nil, skipped, fmt.Errorf("%s: no DICOM files (%d other files)", dir, skipped)
	}
	return instances, skipped, nil
}

// instanceBytes is the request form of read instances.
func instanceBytes(in []dicom.Input) [][]byte {
	out := make([][]byte, len(in))
	for i, x := range in {
		out[i] = x.Data
	}
	return out
}
