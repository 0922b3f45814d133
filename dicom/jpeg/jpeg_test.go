package jpeg

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type bitWriter struct {
	buf   bytes.Buffer
	acc   uint32
	nbits uint
}

func (w *bitWriter) write(v uint32, n uint) {
	for i := int(n) - 1; i >= 0; i-- {
		w.acc = w.acc<<1 | (v>>uint(i))&1
		w.nbits++
		if w.nbits == 8 {
			b := byte(w.acc)
			w.buf.WriteByte(b)
			if b == 0xFF {
				w.buf.WriteByte(0) // byte stuffing
			}
			w.acc, w.nbits = 0, 0
		}
	}
}

func (w *bitWriter) flush() {
	for w.nbits != 0 {
		w.write(1, 1) // pad with ones
	}
}

func predict(pix []int32, w, x, y, firstRow, predictor int, initial int32) int32 {
	switch {
	case y == firstRow && x == 0:
		return initial
	case y == firstRow:
		return pix[y*w+x-1]
	case x == 0:
		return pix[(y-1)*w]
	}
	a, b, c := pix[y*w+x-1], pix[(y-1)*w+x], pix[(y-1)*w+x-1]
	switch predictor {
	case 1:
		return a
	case 2:
		return b
	case 3:
		return c
	case 4:
		return a + b - c
	case 5:
		return a + (b-c)>>1
	case 6:
		return b + (a-c)>>1
	default:
		return (a + b) >> 1
	}
}

// encodeLossless writes a process-14 JPEG with one 5-bit code per
// difference category: a plain but valid encoder for the decoder's tests.
func encodeLossless(pix []int32, w, h, precision, predictor, restartRows int) []byte {
	var out bytes.Buffer
	seg := func(marker byte, payload []byte) {
		out.Write([]byte{0xFF, marker})
		_ = binary.Write(&out, binary.BigEndian, uint16(len(payload)+2))
		out.Write(payload)
	}
	out.Write([]byte{0xFF, 0xD8})
	seg(0xC3, []byte{byte(precision), byte(h >> 8), byte(h), byte(w >> 8), byte(w), 1, 1, 0x11, 0})
	dht := []byte{0x00}
	counts := make([]byte, 16)
	counts[4] = 17
	dht = append(dht, counts...)
	for s := 0; s <= 16; s++ {
		dht = append(dht, byte(s))
	}
	seg(0xC4, dht)
	if restartRows > 0 {
		seg(0xDD, []byte{byte(restartRows * w >> 8), byte(restartRows * w)})
	}
	seg(0xDA, []byte{1, 1, 0x00, byte(predictor), 0, 0})
	bw := &bitWriter{}
	initial := int32(1) << (precision - 1)
	firstRow := 0
	for y := 0; y < h; y++ {
		if restartRows > 0 && y > 0 && y%restartRows == 0 {
			bw.flush()
			bw.buf.Write([]byte{0xFF, 0xD0 + byte((y/restartRows-1)%8)})
			firstRow = y
		}
		for x := 0; x < w; x++ {
			p := predict(pix, w, x, y, firstRow, predictor, initial)
			d := int32(int16(uint16(pix[y*w+x] - p)))
			abs := d
			if abs < 0 {
				abs = -abs
			}
			s := uint(bits.Len32(uint32(abs)))
			if d == -32768 {
				bw.write(16, 5)
				continue
			}
			bw.write(uint32(s), 5)
			v := d
			if d < 0 {
				v = d + (1 << s) - 1
			}
			bw.write(uint32(v), s)
		}
	}
	bw.flush()
	out.Write(bw.buf.Bytes())
	out.Write([]byte{0xFF, 0xD9})
	return out.Bytes()
}

func TestLosslessRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, precision := range []int{8, 12, 16} {
		for predictor := 1; predictor <= 7; predictor++ {
			for _, restart := range []int{0, 3} {
				w, h := 23, 17
				pix := make([]int32, w*h)
				for i := range pix {
					// A smooth ramp plus noise, with extremes to exercise every category.
					pix[i] = int32(i*37+rng.IntN(200)) % (1 << precision)
				}
				pix[5], pix[6] = 0, 1<<precision-1
				data := encodeLossless(pix, w, h, precision, predictor, restart)
				img, err := Decode(data)
				require.NoError(t, err, "precision %d predictor %d restart %d", precision, predictor, restart)
				assert.Equal(t, w, img.Width)
				assert.Equal(t, h, img.Height)
				assert.Equal(t, precision, img.Precision)
				require.Equal(t, pix, img.Pix, "precision %d predictor %d restart %d", precision, predictor, restart)
			}
		}
	}
}

func TestErrors(t *testing.T) {
	pix := make([]int32, 16)
	good := encodeLossless(pix, 4, 4, 12, 1, 0)
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "no start-of-image"},
		{"truncated", good[:len(good)/2], ""},
		{"colour", bytes.Replace(good, []byte{12, 0, 4, 0, 4, 1}, []byte{12, 0, 4, 0, 4, 3}, 1), "3 components"},
		{"huge", bytes.Replace(good, []byte{12, 0, 4, 0, 4, 1}, []byte{12, 0xFF, 0xFF, 0xFF, 0xFF, 1}, 1), "too large"},
		{"arithmetic", bytes.Replace(good, []byte{0xFF, 0xC3}, []byte{0xFF, 0xCB}, 1), "not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(tt.data)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
	_, err := Decode([]byte{0xFF, 0xD8, 0xFF, 0xC0, 0, 11, 8, 0, 4, 0, 4, 1, 1, 0x11, 0})
	assert.ErrorIs(t, err, ErrUseStandard)
}

func FuzzDecode(f *testing.F) {
	pix := make([]int32, 64)
	for i := range pix {
		pix[i] = int32(i * 61 % 4096)
	}
	f.Add(encodeLossless(pix, 8, 8, 12, 1, 0))
	f.Add(encodeLossless(pix, 8, 8, 16, 7, 2))
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := Decode(data)
		if err != nil {
			return
		}
		if len(img.Pix) != img.Width*img.Height {
			t.Fatalf("%d samples for %dx%d", len(img.Pix), img.Width, img.Height)
		}
	})
}
