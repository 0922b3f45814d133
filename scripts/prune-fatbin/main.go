// Command prune-fatbin zeroes, in a copy of a CUDA shared library, the
// machine code of every GPU architecture but one, so that the copy
// compresses to a fraction of the original (internal/fatbin says why and
// how). scripts/gpu-pack.sh runs it on ONNX Runtime's CUDA provider.
//
//	go run ./scripts/prune-fatbin -arch 90 IN.so OUT.so
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/voxserve/voxserve/internal/fatbin"
)

func main() {
	arch := flag.Uint("arch", 90, "the architecture to keep (90: sm_90, Hopper)")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: prune-fatbin [-arch 90] IN.so OUT.so")
		os.Exit(2)
	}
	if err := prune(flag.Arg(0), flag.Arg(1), uint32(*arch)); err != nil {
		fmt.Fprintln(os.Stderr, "prune-fatbin:", err)
		os.Exit(1)
	}
}

func prune(in, out string, arch uint32) error {
	b, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	sec, err := fatbin.Section(b)
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	kept, zeroed, foreign, err := fatbin.Keep(sec, arch)
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	fmt.Printf("kept    %v\nzeroed  %v\n", kept, zeroed)
	if foreign > 0 {
		fmt.Printf("left    %d containers with no image for sm_%d (built for newer devices only)\n", foreign, arch)
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}
