package dicom

import "unsafe"

// float32Bytes views float32s as their little-endian bytes without a copy
// (every platform voxserve builds for is little endian).
func float32Bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
}
