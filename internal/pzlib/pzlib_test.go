package pzlib

import (
	"bytes"
	"compress/zlib"
	"hash/adler32"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The stream reads back with the standard library's zlib reader (which
// checks the Adler-32) as the bytes given, for sizes around the chunk
// boundaries, on random bytes and on label-map-like runs.
func TestCompressReadsBack(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 100, chunk - 1, chunk, chunk + 1, 3*chunk + chunk/2} {
		for _, kind := range []string{"random", "mask", "zero chunks"} {
			data := make([]byte, n)
			switch kind {
			case "zero chunks": // all zero but one byte of the second chunk and the last
				if n > chunk+5 {
					data[chunk+5] = 7
				}
				if n > 0 {
					data[n-1] = 3
				}
			case "random":
				for i := range data {
					data[i] = byte(r.Uint32())
				}
			case "mask":
				for i := 0; i < n; i += 1 + r.IntN(5000) {
					for j := i; j < min(n, i+r.IntN(300)); j++ {
						data[j] = byte(1 + r.IntN(2))
					}
				}
			}
			z := Compress(data)
			zr, err := zlib.NewReader(bytes.NewReader(z))
			require.NoError(t, err, "%s %d", kind, n)
			got, err := io.ReadAll(zr)
			require.NoError(t, err, "%s %d", kind, n)
			assert.True(t, bytes.Equal(data, got), "%s %d differs", kind, n)
			if kind == "mask" && n > chunk {
				assert.Less(t, len(z), n/10, "runs compress")
			}
		}
	}
}

func TestCombine(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for k := 0; k < 200; k++ {
		data := make([]byte, r.IntN(200000))
		for i := range data {
			data[i] = byte(r.Uint32())
		}
		cut := 0
		if len(data) > 0 {
			cut = r.IntN(len(data) + 1)
		}
		a, b := data[:cut], data[cut:]
		assert.Equal(t, adler32.Checksum(data), Combine(adler32.Checksum(a), adler32.Checksum(b), len(b)), "cut %d of %d", cut, len(data))
	}
	// All ones: the sums sit near the modulus.
	ff := bytes.Repeat([]byte{0xff}, 5552*3+7)
	assert.Equal(t, adler32.Checksum(ff), Combine(adler32.Checksum(ff[:5552]), adler32.Checksum(ff[5552:]), len(ff)-5552))
}
