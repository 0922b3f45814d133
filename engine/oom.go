package engine

import (
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// oomMarkers are how ONNX Runtime reports running out of memory: the CUDA
// provider's cudaMalloc failures and its BFC arena, and the CPU allocator.
var oomMarkers = []string{
	"out of memory",                             // CUDA failure 2: out of memory
	"cudaerrormemoryallocation",                 //
	"failed to allocate memory",                 // BFCArena / CPU allocator
	"available memory of",                       // BFCArena: "Available memory of N is smaller than requested bytes of M"
	"bad_alloc",                                 // std::bad_alloc from the CPU provider
	"cuda_error_out_of_memory",                  // driver API
	"cublas_status_alloc_failed",                // cuBLAS workspace
	"cudnn_status_alloc_failed",                 //
	"cudnn_status_not_supported. workspace",     // cuDNN could not get its workspace
	"allocation of memory for the graph failed", //
}

// isOutOfMemory says whether an ONNX Runtime error means memory ran out.
func isOutOfMemory(err error) bool {
	if err == nil {
		return false
	}
	msg := strings.ToLower(err.Error())
	for _, m := range oomMarkers {
		if strings.Contains(msg, m) {
			return true
		}
	}
	return false
}

// runError is the status of a failed run: RESOURCE_EXHAUSTED when memory
// ran out (the request may succeed later, or smaller; the server and the
// model carry on), INTERNAL otherwise.
func runError(model string, err error) error {
	if isOutOfMemory(err) {
		return status.Errorf(codes.ResourceExhausted, "model %s: out of memory running the batch (the model stays loaded; retry later or send less): %v", model, err)
	}
	return status.Errorf(codes.Internal, "model %s: %v", model, err)
}

// loadError is the status of a failed load: RESOURCE_EXHAUSTED when memory
// ran out (the other models keep serving), INVALID_ARGUMENT otherwise (a
// bad bundle).
func loadError(err error) error {
	if isOutOfMemory(err) {
		return status.Errorf(codes.ResourceExhausted, "out of memory loading the model (the models already loaded keep serving): %v", err)
	}
	return status.Error(codes.InvalidArgument, err.Error())
}
