//go:build cuda

package cuda

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
)

// Sticky errors, after which the context is unusable, are told apart
// from the ones a caller recovers from (out of memory, a bad argument).
// No device needed: the codes are cuda.h's.
func TestIsFatal(t *testing.T) {
	for code, fatal := range map[int]bool{
		700: true, 702: true, 710: true, 714: true, 715: true, 716: true, 717: true, 718: true, 719: true, 214: true,
		2: false, 1: false, 201: false, 999: false,
	} {
		err := fmt.Errorf("wrapped: %w", &Error{Op: "cuStreamSynchronize", Code: code, Name: "x"})
		assert.Equal(t, fatal, IsFatal(err), "code %d", code)
	}
	assert.False(t, IsFatal(nil))
	assert.False(t, IsFatal(fmt.Errorf("not a driver error")))
}
