// Package pzlib writes zlib streams (RFC 1950) on every core, as pigz
// does: the data is cut into chunks deflated independently, each ending on
// a byte boundary with a sync flush (the last one with the final block),
// and the chunks' Adler-32 checksums are combined into the stream's. Any
// zlib reader reads the result. A chunk's matches cannot reach into the
// previous chunk, which costs a little size on 1 MiB chunks and nothing on
// label maps, the data voxserve compresses: mostly runs of zeros.
package pzlib

import (
	"bytes"
	"encoding/binary"
	"hash/adler32"
	"sync"

	"github.com/klauspost/compress/flate"

	"github.com/voxserve/voxserve/internal/par"
)

// chunk is the bytes deflated per task: large enough that a task outweighs
// starting it, small enough that a 70 MB mask spreads over 16 cores.
const chunk = 1 << 20

var writers = sync.Pool{New: func() any {
	w, _ := flate.NewWriter(nil, flate.BestSpeed) // BestSpeed is a valid level: no error
	return w
}}

// zeros is a chunk of zeros, and zeroPart its deflated form (not final),
// made once: a label map is mostly background, and a chunk of it that is
// all zeros is found at memory speed and needs no deflating.
var (
	zeros    = make([]byte, chunk)
	zeroPart = sync.OnceValue(func() []byte { return deflate(zeros, false) })
)

// deflate compresses p with a sync flush (the final block if last).
func deflate(p []byte, last bool) []byte {
	var buf bytes.Buffer
	w := writers.Get().(*flate.Writer)
	w.Reset(&buf)
	// Writes to a bytes.Buffer cannot fail.
	_, _ = w.Write(p)
	if last {
		_ = w.Close()
	} else {
		_ = w.Flush()
	}
	writers.Put(w)
	return buf.Bytes()
}

// Compress returns data as a zlib stream at the fastest level.
func Compress(data []byte) []byte {
	n := max(1, (len(data)+chunk-1)/chunk)
	parts := make([][]byte, n)
	sums := make([]uint32, n)
	par.Each(n, func(i int) {
		p := data[i*chunk : min((i+1)*chunk, len(data))]
		if i < n-1 && bytes.Equal(p, zeros) {
			// Adler-32 of k zeros: s1 stays 1, s2 adds it k times.
			parts[i], sums[i] = zeroPart(), uint32(chunk%65521)<<16|1
			return
		}
		parts[i], sums[i] = deflate(p, i == n-1), adler32.Checksum(p)
	})
	size := 6
	for _, p := range parts {
		size += len(p)
	}
	out := make([]byte, 0, size)
	out = append(out, 0x78, 0x01) // deflate, 32 KiB window, fastest level; (0x7801 % 31 == 0)
	sum := sums[0]
	for i, p := range parts {
		out = append(out, p...)
		if i > 0 {
			sum = Combine(sum, sums[i], min((i+1)*chunk, len(data))-i*chunk)
		}
	}
	return binary.BigEndian.AppendUint32(out, sum)
}

// Combine is the Adler-32 of a followed by b, from their checksums and the
// length of b (zlib's adler32_combine).
func Combine(a, b uint32, lenB int) uint32 {
	const base = 65521
	rem := uint64(lenB % base)
	s1 := uint64(a & 0xffff)
	s2 := rem * s1 % base
	s1 += uint64(b&0xffff) + base - 1
	s2 += uint64(a>>16) + uint64(b>>16) + base - rem
	s1 %= base
	s2 %= base
	return uint32(s2<<16 | s1)
}
