// Command gen-demo-model writes the demo bundle's ONNX file, deterministically.
//
//	go run ./scripts/gen-demo-model models/hyperdensity/1/model.onnx
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/voxserve/voxserve/internal/onnxbuild"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gen-demo-model OUT.onnx")
		os.Exit(2)
	}
	out := os.Args[1]
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := os.WriteFile(out, onnxbuild.Hyperdensity(60, 5).Marshal(), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
