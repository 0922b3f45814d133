//go:build !linux || !cgo

package engine

// releaseNativeMemory is a no-op where glibc's malloc_trim is not available.
func releaseNativeMemory() {}
