// Command gen-demo-model writes the demo bundle's ONNX file and an example
// input volume, deterministically.
//
//	go run ./scripts/gen-demo-model models/hyperdensity/1/model.onnx examples/hyperdensity-phantom.npy
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/voxserve/voxserve/internal/onnxbuild"
	"github.com/voxserve/voxserve/tensor"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: gen-demo-model OUT.onnx EXAMPLE.npy")
		os.Exit(2)
	}
	if err := write(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "gen-demo-model:", err)
		os.Exit(1)
	}
}

func write(model, example string) error {
	for _, p := range []string{model, example} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(model, onnxbuild.Hyperdensity(60, 5).Marshal(), 0o644); err != nil {
		return err
	}
	f, err := os.Create(example)
	if err != nil {
		return err
	}
	if err := tensor.WriteNpy(f, onnxbuild.DemoPhantom()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
