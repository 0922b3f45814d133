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
func isOutOfMemory(err error) bool { return mentions(err, oomMarkers) }

// mentions says whether err's message contains one of markers (lower case).
func mentions(err error, markers []string) bool {
	if err == nil {
		return false
	}
	msg := strings.ToLower(err.Error())
	for _, m := range markers {
		if strings.Contains(msg, m) {
			return true
		}
	}
	return false
}

// lostMarkers are how ONNX Runtime's CUDA provider reports CUDA's sticky
// errors, after which the process cannot use the device again.
var lostMarkers = []string{
	"an illegal memory access was encountered", // cudaErrorIllegalAddress (700)
	"cudaerrorillegaladdress",                  //
	"unspecified launch failure",               // cudaErrorLaunchFailure (719)
	"cudaerrorlaunchfailure",                   //
	"the launch timed out and was terminated",  // cudaErrorLaunchTimeout (702)
	"device-side assert triggered",             // cudaErrorAssert (710)
	"an illegal instruction was encountered",   // cudaErrorIllegalInstruction (715)
	"misaligned address",                       // cudaErrorMisalignedAddress (716)
	"uncorrectable ecc error",                  // cudaErrorECCUncorrectable (214)
}

// isDeviceLost says whether an ONNX Runtime error means the GPU is lost
// to this process.
func isDeviceLost(err error) bool { return mentions(err, lostMarkers) }

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
