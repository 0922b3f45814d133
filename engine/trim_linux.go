//go:build linux && cgo

package engine

// #include <malloc.h>
import "C"

// releaseNativeMemory hands the C heap's free pages back to the kernel.
// ONNX Runtime frees a session's weights and arenas on release, but glibc
// keeps freed memory in its per-thread arenas, so without a trim a server
// that reloads models sees its resident memory creep up with every cycle.
func releaseNativeMemory() { C.malloc_trim(0) }
