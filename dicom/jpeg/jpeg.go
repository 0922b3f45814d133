// Package jpeg decodes the JPEG processes DICOM uses that Go's image/jpeg
// does not: lossless (process 14, any predictor, DICOM's JPEG Lossless and
// JPEG Lossless SV1) and 12-bit extended sequential DCT with Huffman coding
// (process 4, in DICOM's JPEG Extended), for single-component (grayscale)
// images. 8-bit DCT images are left to image/jpeg (ErrUseStandard).
//
// References: ITU-T T.81 (JPEG), sections A.4, F.2, H.
package jpeg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
)

// ErrUseStandard says the image is 8-bit DCT, which image/jpeg decodes.
var ErrUseStandard = errors.New("8-bit DCT JPEG: use image/jpeg")

// Image is a decoded single-component image.
type Image struct {
	Width, Height int
	Precision     int
	Components    int
	// Pix holds Width*Height samples, row-major.
	Pix []int32
}

// MaxPixels bounds the image size a header may claim.
const MaxPixels = 1 << 26

type huffman struct {
	// Canonical decoding tables (T.81 F.2.2.3).
	maxcode [18]int32
	valptr  [17]int32
	mincode [17]int32
	vals    []byte
	// lookup maps the next 8 bits to (length<<8 | value) for codes of up to 8 bits.
	lookup [256]uint16
}

func newHuffman(counts [16]byte, vals []byte) (*huffman, error) {
	h := &huffman{vals: vals}
	code, k := int32(0), int32(0)
	for l := 1; l <= 16; l++ {
		n := int32(counts[l-1])
		h.valptr[l] = k
		h.mincode[l] = code
		if code+n > 1<<l {
			return nil, errors.New("bad Huffman table: too many codes of length " + strconv.Itoa(l))
		}
		if n == 0 {
			h.maxcode[l] = -1
		} else {
			code += n
			k += n
			h.maxcode[l] = code - 1
			if l <= 8 {
				for c := h.mincode[l]; c <= h.maxcode[l]; c++ {
					v := vals[h.valptr[l]+c-h.mincode[l]]
					base := c << (8 - l)
					for j := int32(0); j < 1<<(8-l); j++ {
						h.lookup[base+j] = uint16(l)<<8 | uint16(v)
					}
				}
			}
		}
		code <<= 1
	}
	h.maxcode[17] = math.MaxInt32
	if int(k) != len(vals) {
		return nil, errors.New("bad Huffman table length")
	}
	return h, nil
}

type bitReader struct {
	data   []byte
	pos    int
	acc    uint64
	nbits  uint
	marker byte // a marker met in the entropy-coded data (0: none yet)
}

// fill tops the accumulator up to at least 32 bits, unstuffing 0xFF00 and
// stopping (feeding zeros) at a marker.
func (b *bitReader) fill() {
	for b.nbits <= 56 {
		var c byte
		if b.marker == 0 && b.pos < len(b.data) {
			c = b.data[b.pos]
			if c == 0xFF {
				next := byte(0)
				if b.pos+1 < len(b.data) {
					next = b.data[b.pos+1]
				}
				if next == 0x00 {
					b.pos += 2
				} else {
					b.marker = next
					c = 0
				}
			} else {
				b.pos++
			}
		}
		b.acc |= uint64(c) << (56 - b.nbits)
		b.nbits += 8
	}
}

func (b *bitReader) bits(n uint) int32 {
	if n == 0 {
		return 0
	}
	if b.nbits < n {
		b.fill()
	}
	v := int32(b.acc >> (64 - n))
	b.acc <<= n
	b.nbits -= n
	return v
}

func (b *bitReader) decode(h *huffman) (byte, error) {
	if b.nbits < 16 {
		b.fill()
	}
	if e := h.lookup[b.acc>>56]; e != 0 {
		l := uint(e >> 8)
		b.acc <<= l
		b.nbits -= l
		return byte(e), nil
	}
	code := int32(0)
	for l := 1; l <= 16; l++ {
		code = code<<1 | b.bits(1)
		if code <= h.maxcode[l] {
			return h.vals[h.valptr[l]+code-h.mincode[l]], nil
		}
	}
	return 0, errors.New("bad Huffman code")
}

// restart aligns to the next byte and consumes an RSTn marker.
func (b *bitReader) restart() error {
	b.acc, b.nbits = 0, 0
	if b.marker == 0 {
		// Find the marker after the padding bits.
		for b.pos+1 < len(b.data) && !(b.data[b.pos] == 0xFF && b.data[b.pos+1] != 0) {
			b.pos++
		}
		if b.pos+1 >= len(b.data) {
			return errors.New("missing restart marker")
		}
		b.marker = b.data[b.pos+1]
	}
	if b.marker < 0xD0 || b.marker > 0xD7 {
		return fmt.Errorf("expected a restart marker, found 0xFF%02X", b.marker)
	}
	b.pos += 2
	b.marker = 0
	return nil
}

// extend turns a v of s bits into a signed difference (T.81 F.2.2.1).
func extend(v int32, s uint) int32 {
	if s == 0 {
		return 0
	}
	if v < 1<<(s-1) {
		return v - (1 << s) + 1
	}
	return v
}

type decoder struct {
	data      []byte
	pos       int
	lossless  bool
	precision int
	width     int
	height    int
	compID    byte
	hsamp     int
	vsamp     int
	qtSel     int
	ncomp     int
	quant     [4][64]int32
	dc, ac    [4]*huffman
	restart   int
	img       *Image
}

// Decode decodes one JPEG frame.
func Decode(data []byte) (*Image, error) {
	if len(data) < 4 || data[0] != 0xFF || data[1] != 0xD8 {
		return nil, errors.New("no start-of-image marker")
	}
	d := &decoder{data: data, pos: 2}
	for {
		m, seg, err := d.segment()
		if err != nil {
			return nil, err
		}
		switch {
		case m == 0xD9: // EOI
			if d.img == nil {
				return nil, errors.New("no image before end-of-image")
			}
			return d.img, nil
		case m == 0xC0 || m == 0xC1 || m == 0xC3:
			if err := d.frameHeader(m, seg); err != nil {
				return nil, err
			}
			if !d.lossless && d.precision == 8 {
				return nil, ErrUseStandard
			}
		case m == 0xC2 && len(seg) > 0 && seg[0] == 8:
			return nil, ErrUseStandard
		case m >= 0xC2 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC:
			return nil, fmt.Errorf("JPEG process with SOF marker 0xFF%02X is not supported", m)
		case m == 0xC4:
			if err := d.huffmanTables(seg); err != nil {
				return nil, err
			}
		case m == 0xDB:
			if err := d.quantTables(seg); err != nil {
				return nil, err
			}
		case m == 0xDD:
			if len(seg) < 2 {
				return nil, errors.New("short DRI segment")
			}
			d.restart = int(binary.BigEndian.Uint16(seg))
		case m == 0xDA:
			if err := d.scan(seg); err != nil {
				return nil, err
			}
			if d.img != nil && d.pos >= len(d.data) {
				return d.img, nil // tolerate a missing EOI
			}
		}
	}
}

// segment reads the next marker and its payload.
func (d *decoder) segment() (byte, []byte, error) {
	for d.pos < len(d.data) && d.data[d.pos] != 0xFF {
		d.pos++ // tolerate garbage between segments
	}
	for d.pos < len(d.data) && d.data[d.pos] == 0xFF {
		d.pos++
	}
	if d.pos >= len(d.data) {
		if d.img != nil {
			return 0xD9, nil, nil
		}
		return 0, nil, errors.New("truncated JPEG")
	}
	m := d.data[d.pos]
	d.pos++
	if m == 0xD9 || (m >= 0xD0 && m <= 0xD7) || m == 0x01 {
		return m, nil, nil
	}
	if d.pos+2 > len(d.data) {
		return 0, nil, errors.New("truncated JPEG segment")
	}
	n := int(binary.BigEndian.Uint16(d.data[d.pos:]))
	if n < 2 || d.pos+n > len(d.data) {
		return 0, nil, fmt.Errorf("segment 0xFF%02X of length %d overruns the data", m, n)
	}
	seg := d.data[d.pos+2 : d.pos+n]
	d.pos += n
	return m, seg, nil
}

func (d *decoder) frameHeader(m byte, seg []byte) error {
	if len(seg) < 6 {
		return errors.New("short frame header")
	}
	d.lossless = m == 0xC3
	d.precision = int(seg[0])
	d.height = int(binary.BigEndian.Uint16(seg[1:]))
	d.width = int(binary.BigEndian.Uint16(seg[3:]))
	d.ncomp = int(seg[5])
	if d.ncomp != 1 {
		return fmt.Errorf("%d components; only grayscale (1) is supported", d.ncomp)
	}
	if len(seg) < 6+3 {
		return errors.New("short frame header")
	}
	d.compID, d.hsamp, d.vsamp, d.qtSel = seg[6], int(seg[7]>>4), int(seg[7]&15), int(seg[8]&3)
	switch {
	case d.width == 0 || d.height == 0:
		return fmt.Errorf("image is %dx%d", d.width, d.height)
	case d.width*d.height > MaxPixels:
		return fmt.Errorf("image of %dx%d is too large", d.width, d.height)
	case d.lossless && (d.precision < 2 || d.precision > 16):
		return fmt.Errorf("lossless precision %d is outside 2..16", d.precision)
	case !d.lossless && d.precision != 8 && d.precision != 12:
		return fmt.Errorf("DCT precision %d is not 8 or 12", d.precision)
	}
	d.img = &Image{Width: d.width, Height: d.height, Precision: d.precision, Components: 1, Pix: make([]int32, d.width*d.height)}
	return nil
}

func (d *decoder) huffmanTables(seg []byte) error {
	for len(seg) > 0 {
		if len(seg) < 17 {
			return errors.New("short Huffman table")
		}
		class, id := seg[0]>>4, seg[0]&15
		if class > 1 || id > 3 {
			return errors.New("bad Huffman table id")
		}
		var counts [16]byte
		copy(counts[:], seg[1:17])
		total := 0
		for _, c := range counts {
			total += int(c)
		}
		if len(seg) < 17+total || total > 256 {
			return errors.New("short Huffman table")
		}
		h, err := newHuffman(counts, append([]byte(nil), seg[17:17+total]...))
		if err != nil {
			return err
		}
		if class == 0 {
			d.dc[id] = h
		} else {
			d.ac[id] = h
		}
		seg = seg[17+total:]
	}
	return nil
}

func (d *decoder) quantTables(seg []byte) error {
	for len(seg) > 0 {
		pq, id := seg[0]>>4, seg[0]&15
		if id > 3 {
			return errors.New("bad quantization table id")
		}
		seg = seg[1:]
		for i := 0; i < 64; i++ {
			switch {
			case pq == 0 && len(seg) > i:
				d.quant[id][i] = int32(seg[i])
			case pq == 1 && len(seg) > 2*i+1:
				d.quant[id][i] = int32(binary.BigEndian.Uint16(seg[2*i:]))
			default:
				return errors.New("short quantization table")
			}
		}
		seg = seg[64*(int(pq)+1):]
	}
	return nil
}

func (d *decoder) scan(seg []byte) error {
	if d.img == nil {
		return errors.New("scan before frame header")
	}
	if len(seg) < 1 || int(seg[0]) != 1 || len(seg) < 6 {
		return errors.New("scan must have exactly one component")
	}
	tables := seg[2]
	ss, al := int(seg[3]), uint(seg[5]&15)
	dcT, acT := tables>>4&3, tables&3
	br := &bitReader{data: d.data, pos: d.pos}
	var err error
	if d.lossless {
		err = d.losslessScan(br, d.dc[dcT], ss, al)
	} else {
		err = d.dctScan(br, d.dc[dcT], d.ac[acT])
	}
	if err != nil {
		return err
	}
	// Continue after the entropy-coded data, at the marker that ended it.
	d.pos = br.pos
	return nil
}

func (d *decoder) losslessScan(br *bitReader, h *huffman, predictor int, pt uint) error {
	if h == nil {
		return errors.New("scan uses an undefined Huffman table")
	}
	if predictor < 1 || predictor > 7 {
		return fmt.Errorf("predictor %d is not 1..7", predictor)
	}
	if int(pt) >= d.precision {
		return fmt.Errorf("point transform %d is not below the precision %d", pt, d.precision)
	}
	w, ht, pix := d.width, d.height, d.img.Pix
	initial := int32(1) << (d.precision - int(pt) - 1)
	mask := int32(1)<<d.precision - 1
	restartRows := 0
	if d.restart > 0 {
		if d.restart%w != 0 {
			return fmt.Errorf("restart interval %d is not a whole number of rows (%d)", d.restart, w)
		}
		restartRows = d.restart / w
	}
	firstRow := 0 // first row of the current restart interval
	for y := 0; y < ht; y++ {
		if restartRows > 0 && y > 0 && y%restartRows == 0 {
			if err := br.restart(); err != nil {
				return err
			}
			firstRow = y
		}
		row := pix[y*w : (y+1)*w]
		for x := 0; x < w; x++ {
			s, err := br.decode(h)
			if err != nil {
				return fmt.Errorf("row %d: %w", y, err)
			}
			var diff int32
			switch {
			case s == 16:
				diff = 32768
			case s > 16:
				return fmt.Errorf("row %d: difference category %d", y, s)
			default:
				diff = extend(br.bits(uint(s)), uint(s))
			}
			var pred int32
			switch {
			case y == firstRow && x == 0:
				pred = initial
			case y == firstRow:
				pred = row[x-1]
			case x == 0:
				pred = pix[(y-1)*w]
			default:
				a, b, c := row[x-1], pix[(y-1)*w+x], pix[(y-1)*w+x-1]
				switch predictor {
				case 1:
					pred = a
				case 2:
					pred = b
				case 3:
					pred = c
				case 4:
					pred = a + b - c
				case 5:
					pred = a + (b-c)>>1
				case 6:
					pred = b + (a-c)>>1
				case 7:
					pred = (a + b) >> 1
				}
			}
			row[x] = (pred + diff) & 0xFFFF
		}
	}
	if pt > 0 || d.precision < 16 {
		for i, v := range pix {
			pix[i] = (v << pt) & mask
		}
	}
	return nil
}

var zigzag = [64]int{
	0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
	12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
	35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
	58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
}

// idctBasis[x][u] = C(u)/2 * cos((2x+1)uπ/16).
var idctBasis = func() (t [8][8]float64) {
	for x := 0; x < 8; x++ {
		for u := 0; u < 8; u++ {
			c := 1.0
			if u == 0 {
				c = 1 / math.Sqrt2
			}
			t[x][u] = c / 2 * math.Cos(float64(2*x+1)*float64(u)*math.Pi/16)
		}
	}
	return
}()

func (d *decoder) dctScan(br *bitReader, dc, ac *huffman) error {
	if dc == nil || ac == nil {
		return errors.New("scan uses an undefined Huffman table")
	}
	q := &d.quant[d.qtSel]
	bw, bh := (d.width+7)/8, (d.height+7)/8
	maxv := int32(1)<<d.precision - 1
	shift := float64(int32(1) << (d.precision - 1))
	var pred int32
	var coef [64]int32
	var tmp [64]float64
	for n := 0; n < bw*bh; n++ {
		if d.restart > 0 && n > 0 && n%d.restart == 0 {
			if err := br.restart(); err != nil {
				return err
			}
			pred = 0
		}
		coef = [64]int32{}
		s, err := br.decode(dc)
		if err != nil {
			return fmt.Errorf("block %d: %w", n, err)
		}
		if s > 15 {
			return fmt.Errorf("block %d: DC category %d", n, s)
		}
		pred += extend(br.bits(uint(s)), uint(s))
		coef[0] = pred * q[0]
		for k := 1; k < 64; {
			rs, err := br.decode(ac)
			if err != nil {
				return fmt.Errorf("block %d: %w", n, err)
			}
			r, s := int(rs>>4), uint(rs&15)
			if s == 0 {
				if r != 15 {
					break // end of block
				}
				k += 16
				continue
			}
			k += r
			if k > 63 {
				return fmt.Errorf("block %d: AC coefficients overrun", n)
			}
			coef[zigzag[k]] = extend(br.bits(s), s) * q[k]
			k++
		}
		// Separable IDCT: rows, then columns.
		for y := 0; y < 8; y++ {
			for x := 0; x < 8; x++ {
				sum := 0.0
				for u := 0; u < 8; u++ {
					if c := coef[y*8+u]; c != 0 {
						sum += idctBasis[x][u] * float64(c)
					}
				}
				tmp[y*8+x] = sum
			}
		}
		bx, by := n%bw*8, n/bw*8
		for x := 0; x < 8; x++ {
			for y := 0; y < 8; y++ {
				sum := 0.0
				for v := 0; v < 8; v++ {
					sum += idctBasis[y][v] * tmp[v*8+x]
				}
				px, py := bx+x, by+y
				if px >= d.width || py >= d.height {
					continue
				}
				val := int32(math.Round(sum + shift))
				val = min(max(val, 0), maxv)
				d.img.Pix[py*d.width+px] = val
			}
		}
	}
	return nil
}
