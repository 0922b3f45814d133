package tensor

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// The .npy format (NumPy's own): magic, version, a Python-literal header
// dict, then the raw array. https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html

var npyMagic = []byte("\x93NUMPY")

var npyDescr = map[string]DType{
	"f4": Float32, "f2": Float16, "f8": Float64, "i1": Int8, "u1": Uint8,
	"i2": Int16, "u2": Uint16, "i4": Int32, "i8": Int64, "b1": Bool,
}

var (
	reDescr   = regexp.MustCompile(`'descr'\s*:\s*'([<>|=])([a-z][0-9]+)'`)
	reFortran = regexp.MustCompile(`'fortran_order'\s*:\s*(True|False)`)
	reShape   = regexp.MustCompile(`'shape'\s*:\s*\(([^)]*)\)`)
)

// maxNpyHeader bounds the header we are willing to read.
const maxNpyHeader = 1 << 16

// ReadNpy parses a .npy file. maxBytes caps the array payload (0: no cap
// beyond MaxElements) so that a header cannot make us allocate without bound.
func ReadNpy(r io.Reader, maxBytes int64) (*Tensor, error) {
	pre := make([]byte, 10)
	if _, err := io.ReadFull(r, pre); err != nil {
		return nil, fmt.Errorf("npy: reading preamble: %w", err)
	}
	if !bytes.Equal(pre[:6], npyMagic) {
		return nil, errors.New("npy: not a .npy file (bad magic)")
	}
	var hlen int
	switch pre[6] {
	case 1:
		hlen = int(binary.LittleEndian.Uint16(pre[8:10]))
	case 2, 3:
		var rest [2]byte
		if _, err := io.ReadFull(r, rest[:]); err != nil {
			return nil, fmt.Errorf("npy: reading header length: %w", err)
		}
		hlen = int(binary.LittleEndian.Uint32(append(pre[8:10:10], rest[:]...)))
	default:
		return nil, fmt.Errorf("npy: unsupported format version %d.%d", pre[6], pre[7])
	}
	if hlen > maxNpyHeader {
		return nil, fmt.Errorf("npy: header of %d bytes is too long", hlen)
	}
	header := make([]byte, hlen)
	if _, err := io.ReadFull(r, header); err != nil {
		return nil, fmt.Errorf("npy: reading header: %w", err)
	}
	h := string(header)
	m := reDescr.FindStringSubmatch(h)
	if m == nil {
		return nil, fmt.Errorf("npy: header has no supported 'descr': %q", strings.TrimSpace(h))
	}
	dt, ok := npyDescr[m[2]]
	if !ok {
		return nil, fmt.Errorf("npy: unsupported element type %q", m[1]+m[2])
	}
	bigEndian := m[1] == ">"
	if f := reFortran.FindStringSubmatch(h); f == nil {
		return nil, errors.New("npy: header has no 'fortran_order'")
	} else if f[1] == "True" {
		return nil, errors.New("npy: Fortran-ordered arrays are not supported; save with np.ascontiguousarray")
	}
	s := reShape.FindStringSubmatch(h)
	if s == nil {
		return nil, errors.New("npy: header has no 'shape'")
	}
	var shape []int64
	for _, part := range strings.Split(s[1], ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		d, err := strconv.ParseInt(part, 10, 64)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("npy: bad dimension %q in shape", part)
		}
		shape = append(shape, d)
	}
	n, err := NumElements(shape)
	if err != nil {
		return nil, fmt.Errorf("npy: %w", err)
	}
	size := n * int64(dt.Size())
	if maxBytes > 0 && size > maxBytes {
		return nil, fmt.Errorf("npy: array of %d bytes exceeds the limit of %d", size, maxBytes)
	}
	t := &Tensor{DType: dt, Shape: shape}
	// Read through a LimitReader so a lying header costs at most the real file size.
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(r, size)); err != nil {
		return nil, fmt.Errorf("npy: reading data: %w", err)
	}
	if int64(buf.Len()) != size {
		return nil, fmt.Errorf("npy: data is %d bytes, shape %v of %s needs %d (truncated file?)", buf.Len(), shape, dt, size)
	}
	t.Data = buf.Bytes()
	if bigEndian && dt.Size() > 1 {
		swapBytes(t.Data, dt.Size())
	}
	return t, nil
}

func swapBytes(b []byte, width int) {
	for i := 0; i+width <= len(b); i += width {
		for j := 0; j < width/2; j++ {
			b[i+j], b[i+width-1-j] = b[i+width-1-j], b[i+j]
		}
	}
}

// WriteNpy writes a tensor as a version 1.0 .npy file.
func WriteNpy(w io.Writer, t *Tensor) error {
	code := ""
	for k, v := range npyDescr {
		if v == t.DType {
			code = k
		}
	}
	if code == "" {
		return fmt.Errorf("npy: cannot write element type %q", t.DType)
	}
	order := "<"
	if t.DType.Size() == 1 {
		order = "|"
	}
	dims := make([]string, len(t.Shape))
	for i, d := range t.Shape {
		dims[i] = strconv.FormatInt(d, 10)
	}
	shape := strings.Join(dims, ", ")
	if len(dims) == 1 {
		shape += ","
	}
	h := fmt.Sprintf("{'descr': '%s%s', 'fortran_order': False, 'shape': (%s), }", order, code, shape)
	// Pad so that the data starts on a 64-byte boundary, newline-terminated.
	total := len(npyMagic) + 4 + len(h) + 1
	h += strings.Repeat(" ", (64-total%64)%64) + "\n"
	if len(h) > 0xffff {
		return errors.New("npy: header too long")
	}
	var pre [10]byte
	copy(pre[:], npyMagic)
	pre[6], pre[7] = 1, 0
	binary.LittleEndian.PutUint16(pre[8:], uint16(len(h)))
	if _, err := w.Write(pre[:]); err != nil {
		return err
	}
	if _, err := io.WriteString(w, h); err != nil {
		return err
	}
	_, err := w.Write(t.Data)
	return err
}
