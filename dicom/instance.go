// Package dicom reads DICOM Part 10 instances (with
// github.com/suyashkumar/dicom) into the metadata and pixel values voxserve
// needs, and assembles series into volumes with patient-space geometry.
//
// Errors name the instance (its file name, or its position in a request)
// and the tag at fault; they never carry patient names or IDs.
package dicom

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	sd "github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
)

// Limits that cap what an instance may claim before we allocate for it.
const (
	MaxRows     = 8192
	MaxColumns  = 8192
	MaxFrames   = 8192
	MaxInstance = 2 << 30 // bytes of one Part 10 file
	// MaxPixels caps rows x columns x frames of one instance (a 4 GiB int16 volume).
	MaxPixels = 1 << 31
	// MaxCompressionRatio bounds how far compressed pixel data may expand;
	// real lossless images stay far below it, decompression bombs do not.
	MaxCompressionRatio = 2000
)

// Error is a problem with one instance, naming the tag where one is at fault.
type Error struct {
	Source string // file name or request position
	Tag    string // e.g. "(0028,0010) Rows"; empty when no single tag is at fault
	Msg    string
	// Unsupported marks input that is valid DICOM that voxserve does not
	// handle (a transfer syntax, a photometric interpretation).
	Unsupported bool
}

func (e *Error) Error() string {
	if e.Tag == "" {
		return fmt.Sprintf("%s: %s", e.Source, e.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", e.Source, e.Tag, e.Msg)
}

// ErrNotImage marks instances that carry no image (SR, SEG, presentation
// states, DICOMDIR, RT plans): series assembly skips them.
var ErrNotImage = errors.New("not an image instance")

// Transfer syntaxes.
const (
	ImplicitVRLittleEndian = "1.2.840.10008.1.2"
	ExplicitVRLittleEndian = "1.2.840.10008.1.2.1"
	DeflatedExplicitVRLE   = "1.2.840.10008.1.2.1.99"
	ExplicitVRBigEndian    = "1.2.840.10008.1.2.2"
	JPEGBaseline           = "1.2.840.10008.1.2.4.50"
	JPEGExtended           = "1.2.840.10008.1.2.4.51"
	JPEGLossless           = "1.2.840.10008.1.2.4.57"
	JPEGLosslessSV1        = "1.2.840.10008.1.2.4.70"
	RLELossless            = "1.2.840.10008.1.2.5"
)

var syntaxNames = map[string]string{
	ImplicitVRLittleEndian:    "Implicit VR Little Endian",
	ExplicitVRLittleEndian:    "Explicit VR Little Endian",
	DeflatedExplicitVRLE:      "Deflated Explicit VR Little Endian",
	ExplicitVRBigEndian:       "Explicit VR Big Endian",
	JPEGBaseline:              "JPEG Baseline (Process 1)",
	JPEGExtended:              "JPEG Extended (Process 2 & 4)",
	JPEGLossless:              "JPEG Lossless (Process 14)",
	JPEGLosslessSV1:           "JPEG Lossless SV1 (Process 14, selection value 1)",
	RLELossless:               "RLE Lossless",
	"1.2.840.10008.1.2.4.80":  "JPEG-LS Lossless",
	"1.2.840.10008.1.2.4.81":  "JPEG-LS Near-Lossless",
	"1.2.840.10008.1.2.4.90":  "JPEG 2000 Lossless",
	"1.2.840.10008.1.2.4.91":  "JPEG 2000",
	"1.2.840.10008.1.2.4.201": "HTJ2K Lossless",
	"1.2.840.10008.1.2.4.202": "HTJ2K Lossless RPCL",
	"1.2.840.10008.1.2.4.203": "HTJ2K",
}

func isNativeSyntax(uid string) bool {
	switch uid {
	case ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLE, ExplicitVRBigEndian:
		return true
	}
	return false
}

// DecodedSyntaxes lists the transfer syntaxes whose pixels voxserve decodes.
func DecodedSyntaxes() []string {
	return []string{ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLE, ExplicitVRBigEndian,
		RLELossless, JPEGBaseline, JPEGExtended, JPEGLossless, JPEGLosslessSV1}
}

// SyntaxName is a transfer syntax's name, or its UID when unknown.
func SyntaxName(uid string) string {
	if n, ok := syntaxNames[uid]; ok {
		return n
	}
	return uid
}

// Frame is the per-frame geometry and rescale of a (possibly multi-frame)
// instance.
type Frame struct {
	Position     [3]float64
	HasPosition  bool
	Orientation  [6]float64
	HasOrient    bool
	Slope        float64
	Intercept    float64
	PixelSpacing [2]float64 // row spacing (between rows), column spacing
	HasSpacing   bool
}

// Instance is the part of a DICOM instance voxserve uses. It carries no
// patient identity.
type Instance struct {
	Source         string
	TransferSyntax string

	SOPClassUID       string
	SOPInstanceUID    string
	StudyInstanceUID  string
	SeriesInstanceUID string
	FrameOfReference  string
	Modality          string
	BodyPart          string
	Manufacturer      string
	InstanceNumber    int
	SliceThickness    float64
	KVP               float64

	Rows, Columns       int
	NumberOfFrames      int
	SamplesPerPixel     int
	BitsAllocated       int
	BitsStored          int
	HighBit             int
	PixelRepresentation int // 0 unsigned, 1 two's complement
	Photometric         string

	// Frames has one entry per frame with its geometry and rescale.
	Frames []Frame

	// Subject is the patient and study attributes derived objects copy.
	Subject Subject

	native    []byte   // native pixel data, file byte order
	bigEndian bool     // native data is big endian
	fragments [][]byte // encapsulated pixel data, one entry per fragment
}

// non-image storage classes that a study folder commonly holds.
var nonImageClasses = map[string]string{
	"1.2.840.10008.1.3.10":          "Media Storage Directory (DICOMDIR)",
	"1.2.840.10008.5.1.4.1.1.66.4":  "Segmentation",
	"1.2.840.10008.5.1.4.1.1.481.5": "RT Plan",
	"1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set",
	"1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
}

func isNonImageClass(uid string) (string, bool) {
	if n, ok := nonImageClasses[uid]; ok {
		return n, true
	}
	switch {
	case strings.HasPrefix(uid, "1.2.840.10008.5.1.4.1.1.88."): // structured reports
		return "Structured Report", true
	case strings.HasPrefix(uid, "1.2.840.10008.5.1.4.1.1.11."): // presentation states
		return "Presentation State", true
	case strings.HasPrefix(uid, "1.2.840.10008.5.1.4.1.1.9."): // waveforms
		return "Waveform", true
	}
	return "", false
}

// Read parses one Part 10 instance. source names it in errors. Instances
// without pixel data (or of a non-image class) return an error wrapping
// ErrNotImage.
func Read(source string, data []byte) (*Instance, error) {
	fail := func(t, format string, args ...any) (*Instance, error) {
		return nil, &Error{Source: source, Tag: t, Msg: fmt.Sprintf(format, args...)}
	}
	if len(data) > MaxInstance {
		return fail("", "instance is %d bytes, more than the %d allowed", len(data), MaxInstance)
	}
	if err := precheck(data); err != nil {
		return fail("", "not a readable DICOM file: %v", err)
	}
	ds, err := parse(data)
	if err != nil {
		return fail("", "not a readable DICOM file: %v", err)
	}
	in := &Instance{Source: source}
	get := func(t tag.Tag) *sd.Element {
		e, err := ds.FindElementByTag(t)
		if err != nil {
			return nil
		}
		return e
	}
	in.TransferSyntax = str(get(tag.TransferSyntaxUID))
	if in.TransferSyntax == "" {
		in.TransferSyntax = ImplicitVRLittleEndian // files without a meta header
	}
	in.SOPClassUID = str(get(tag.SOPClassUID))
	if in.SOPClassUID == "" {
		in.SOPClassUID = str(get(tag.MediaStorageSOPClassUID))
	}
	in.SOPInstanceUID = str(get(tag.SOPInstanceUID))
	in.StudyInstanceUID = str(get(tag.StudyInstanceUID))
	in.SeriesInstanceUID = str(get(tag.SeriesInstanceUID))
	in.FrameOfReference = str(get(tag.FrameOfReferenceUID))
	in.Modality = strings.ToUpper(str(get(tag.Modality)))
	in.BodyPart = strings.ToUpper(str(get(tag.BodyPartExamined)))
	in.Manufacturer = str(get(tag.Manufacturer))
	in.Photometric = strings.ToUpper(str(get(tag.PhotometricInterpretation)))
	in.Subject = readSubject(&ds)
	if name, ok := isNonImageClass(in.SOPClassUID); ok {
		return nil, fmt.Errorf("%s: %s: %w", source, name, ErrNotImage)
	}
	pix := get(tag.PixelData)
	if pix == nil {
		if get(tag.Rows) != nil {
			// An image module without pixels: a truncated image, not a non-image object.
			return fail(pixelTag, "missing, though the image has Rows and Columns (truncated file?)")
		}
		return nil, fmt.Errorf("%s: no pixel data (7FE0,0010): %w", source, ErrNotImage)
	}

	var ok bool
	ints := []struct {
		dst  *int
		t    tag.Tag
		name string
		req  bool
	}{
		{&in.Rows, tag.Rows, "(0028,0010) Rows", true},
		{&in.Columns, tag.Columns, "(0028,0011) Columns", true},
		{&in.BitsAllocated, tag.BitsAllocated, "(0028,0100) Bits Allocated", true},
		{&in.BitsStored, tag.BitsStored, "(0028,0101) Bits Stored", false},
		{&in.HighBit, tag.HighBit, "(0028,0102) High Bit", false},
		{&in.PixelRepresentation, tag.PixelRepresentation, "(0028,0103) Pixel Representation", false},
		{&in.SamplesPerPixel, tag.SamplesPerPixel, "(0028,0002) Samples per Pixel", false},
	}
	for _, f := range ints {
		e := get(f.t)
		if e == nil {
			if f.req {
				return fail(f.name, "missing")
			}
			*f.dst = -1
			continue
		}
		if *f.dst, ok = intOf(e); !ok {
			return fail(f.name, "is not a number")
		}
	}
	if in.SamplesPerPixel == -1 {
		in.SamplesPerPixel = 1
	}
	if in.BitsStored == -1 {
		in.BitsStored = in.BitsAllocated
	}
	if in.PixelRepresentation == -1 {
		in.PixelRepresentation = 0
	}
	switch {
	case in.Rows <= 0 || in.Rows > MaxRows:
		return fail("(0028,0010) Rows", "%d is outside 1..%d", in.Rows, MaxRows)
	case in.Columns <= 0 || in.Columns > MaxColumns:
		return fail("(0028,0011) Columns", "%d is outside 1..%d", in.Columns, MaxColumns)
	case in.BitsAllocated != 8 && in.BitsAllocated != 16 && in.BitsAllocated != 32:
		return nil, &Error{Source: source, Tag: "(0028,0100) Bits Allocated", Unsupported: in.BitsAllocated == 1,
			Msg: fmt.Sprintf("%d is not supported (8, 16 or 32)", in.BitsAllocated)}
	case in.BitsStored < 1 || in.BitsStored > in.BitsAllocated:
		return fail("(0028,0101) Bits Stored", "%d must be between 1 and Bits Allocated (%d)", in.BitsStored, in.BitsAllocated)
	case in.PixelRepresentation != 0 && in.PixelRepresentation != 1:
		return fail("(0028,0103) Pixel Representation", "%d must be 0 or 1", in.PixelRepresentation)
	}
	if in.SamplesPerPixel != 1 || (in.Photometric != "MONOCHROME1" && in.Photometric != "MONOCHROME2") {
		return nil, &Error{Source: source, Tag: "(0028,0004) Photometric Interpretation", Unsupported: true,
			Msg: fmt.Sprintf("%q with %d samples per pixel is not supported; voxserve reads grayscale (MONOCHROME1/2) images", in.Photometric, in.SamplesPerPixel)}
	}
	in.NumberOfFrames = 1
	if e := get(tag.NumberOfFrames); e != nil {
		n, ok := intOf(e)
		if !ok || n < 1 || n > MaxFrames {
			return fail("(0028,0008) Number of Frames", "%q must be a number between 1 and %d", str(e), MaxFrames)
		}
		in.NumberOfFrames = n
	}
	if int64(in.Rows)*int64(in.Columns)*int64(in.NumberOfFrames) > MaxPixels {
		return fail("(0028,0008) Number of Frames", "%d frames of %dx%d exceed %d pixels", in.NumberOfFrames, in.Rows, in.Columns, MaxPixels)
	}
	in.InstanceNumber, _ = intOf(get(tag.InstanceNumber))
	in.SliceThickness, _ = floatOf(get(tag.SliceThickness))
	in.KVP, _ = floatOf(get(tag.KVP))

	// Pixel data: raw native bytes, or encapsulated fragments.
	info, ok := pix.Value.GetValue().(sd.PixelDataInfo)
	if !ok {
		return fail("(7FE0,0010) Pixel Data", "unreadable value")
	}
	in.bigEndian = in.TransferSyntax == ExplicitVRBigEndian
	switch {
	case info.IntentionallyUnprocessed:
		if !isNativeSyntax(in.TransferSyntax) {
			return fail(pixelTag, "is not encapsulated, but the transfer syntax %s (%s) is compressed", in.TransferSyntax, SyntaxName(in.TransferSyntax))
		}
		in.native = info.UnprocessedValueData
	case info.IsEncapsulated:
		if isNativeSyntax(in.TransferSyntax) {
			return fail(pixelTag, "is encapsulated, but the transfer syntax %s (%s) is not compressed", in.TransferSyntax, SyntaxName(in.TransferSyntax))
		}
		for _, f := range info.Frames {
			in.fragments = append(in.fragments, f.EncapsulatedData.Data)
		}
	default:
		return fail("(7FE0,0010) Pixel Data", "unexpected encoding")
	}
	// Check the claimed size against the bytes we hold before anyone
	// allocates for it: native data must be all there; compressed data may
	// not expand beyond a generous ratio (a decompression bomb would).
	need := int64(in.Rows) * int64(in.Columns) * int64(in.NumberOfFrames) * int64(in.BitsAllocated/8)
	if in.native != nil && int64(len(in.native)) < need {
		return fail(pixelTag, "holds %d bytes, %d frames of %dx%d at %d bits need %d", len(in.native), in.NumberOfFrames, in.Rows, in.Columns, in.BitsAllocated, need)
	}
	if in.fragments != nil {
		var have int64
		for _, f := range in.fragments {
			have += int64(len(f))
		}
		if need > have*MaxCompressionRatio+1<<20 {
			return fail(pixelTag, "%d compressed bytes cannot hold %d frames of %dx%d (more than %d:1)", have, in.NumberOfFrames, in.Rows, in.Columns, MaxCompressionRatio)
		}
	}
	if err := in.readFrames(ds, get); err != nil {
		return nil, err
	}
	return in, nil
}

// readFrames fills per-frame geometry and rescale: from the per-frame and
// shared functional groups of enhanced multi-frame objects, else from the
// classic top-level tags.
func (in *Instance) readFrames(ds sd.Dataset, get func(tag.Tag) *sd.Element) error {
	base := Frame{Slope: 1}
	var err error
	if base, err = in.frameFrom(base, elementsOf(ds.Elements)); err != nil {
		return err
	}
	// DX/CR: Imager Pixel Spacing when Pixel Spacing is absent.
	if !base.HasSpacing {
		if v, ok := floatsOf(get(tag.ImagerPixelSpacing), 2); ok {
			base.PixelSpacing, base.HasSpacing = [2]float64{v[0], v[1]}, true
		}
	}
	if shared := firstItem(get(tag.SharedFunctionalGroupsSequence)); shared != nil {
		if base, err = in.groupFrame(base, shared); err != nil {
			return err
		}
	}
	in.Frames = make([]Frame, in.NumberOfFrames)
	perFrame := items(get(tag.PerFrameFunctionalGroupsSequence))
	if len(perFrame) > 0 && len(perFrame) != in.NumberOfFrames {
		return &Error{Source: in.Source, Tag: "(5200,9230) Per-frame Functional Groups Sequence",
			Msg: fmt.Sprintf("has %d items for %d frames", len(perFrame), in.NumberOfFrames)}
	}
	for i := range in.Frames {
		in.Frames[i] = base
		if len(perFrame) > 0 {
			if in.Frames[i], err = in.groupFrame(base, perFrame[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// groupFrame applies one functional group item (shared or per-frame).
func (in *Instance) groupFrame(f Frame, group map[tag.Tag]*sd.Element) (Frame, error) {
	var err error
	for _, seq := range []tag.Tag{tag.PlanePositionSequence, tag.PlaneOrientationSequence,
		tag.PixelMeasuresSequence, tag.PixelValueTransformationSequence} {
		if item := firstItem(group[seq]); item != nil {
			if f, err = in.frameFrom(f, item); err != nil {
				return f, err
			}
		}
	}
	return f, nil
}

// frameFrom reads geometry and rescale tags present in elems over f.
func (in *Instance) frameFrom(f Frame, elems map[tag.Tag]*sd.Element) (Frame, error) {
	bad := func(t, format string, args ...any) (Frame, error) {
		return f, &Error{Source: in.Source, Tag: t, Msg: fmt.Sprintf(format, args...)}
	}
	// Empty values are as good as absent (type 2 attributes may be empty).
	present := func(t tag.Tag) *sd.Element {
		if e := elems[t]; e != nil && str(e) != "" {
			return e
		}
		return nil
	}
	if e := present(tag.ImagePositionPatient); e != nil {
		v, ok := floatsOf(e, 3)
		if !ok {
			return bad("(0020,0032) Image Position (Patient)", "%q is not three numbers", str(e))
		}
		f.Position, f.HasPosition = [3]float64{v[0], v[1], v[2]}, true
	}
	if e := present(tag.ImageOrientationPatient); e != nil {
		v, ok := floatsOf(e, 6)
		if !ok {
			return bad("(0020,0037) Image Orientation (Patient)", "%q is not six numbers", str(e))
		}
		copy(f.Orientation[:], v)
		f.HasOrient = true
	}
	if e := present(tag.PixelSpacing); e != nil {
		v, ok := floatsOf(e, 2)
		if !ok || !(v[0] > 0) || !(v[1] > 0) {
			return bad("(0028,0030) Pixel Spacing", "%q is not two positive numbers", str(e))
		}
		f.PixelSpacing, f.HasSpacing = [2]float64{v[0], v[1]}, true
	}
	if e := present(tag.RescaleSlope); e != nil {
		v, ok := floatOf(e)
		if !ok || v == 0 {
			return bad("(0028,1053) Rescale Slope", "%q is not a non-zero number", str(e))
		}
		f.Slope = v
	}
	if e := present(tag.RescaleIntercept); e != nil {
		v, ok := floatOf(e)
		if !ok {
			return bad("(0028,1052) Rescale Intercept", "%q is not a number", str(e))
		}
		f.Intercept = v
	}
	return f, nil
}

func elementsOf(es []*sd.Element) map[tag.Tag]*sd.Element {
	m := make(map[tag.Tag]*sd.Element, len(es))
	for _, e := range es {
		m[e.Tag] = e
	}
	return m
}

func items(e *sd.Element) []map[tag.Tag]*sd.Element {
	if e == nil {
		return nil
	}
	seq, ok := e.Value.GetValue().([]*sd.SequenceItemValue)
	if !ok {
		return nil
	}
	out := make([]map[tag.Tag]*sd.Element, 0, len(seq))
	for _, it := range seq {
		if es, ok := it.GetValue().([]*sd.Element); ok {
			out = append(out, elementsOf(es))
		}
	}
	return out
}

func firstItem(e *sd.Element) map[tag.Tag]*sd.Element {
	if it := items(e); len(it) > 0 {
		return it[0]
	}
	return nil
}

func str(e *sd.Element) string {
	if e == nil || e.Value == nil {
		return ""
	}
	switch v := e.Value.GetValue().(type) {
	case []byte:
		// A text value stored with VR UN (pydicom maps these to the
		// dictionary VR; the parser leaves bytes).
		return strings.Trim(string(v), " \x00")
	case []string:
		return strings.TrimSpace(strings.Join(v, "\\"))
	case []int:
		parts := make([]string, len(v))
		for i, x := range v {
			parts[i] = strconv.Itoa(x)
		}
		return strings.Join(parts, "\\")
	case []float64:
		parts := make([]string, len(v))
		for i, x := range v {
			parts[i] = strconv.FormatFloat(x, 'g', -1, 64)
		}
		return strings.Join(parts, "\\")
	}
	return ""
}

func intOf(e *sd.Element) (int, bool) {
	if e == nil || e.Value == nil {
		return 0, false
	}
	switch v := e.Value.GetValue().(type) {
	case []int:
		if len(v) > 0 {
			return v[0], true
		}
	case []byte:
		n, err := strconv.Atoi(str(e))
		return n, err == nil
	case []string:
		if len(v) > 0 {
			n, err := strconv.Atoi(strings.TrimSpace(v[0]))
			return n, err == nil
		}
	}
	return 0, false
}

func floatOf(e *sd.Element) (float64, bool) {
	v, ok := floatsOf(e, 1)
	if !ok {
		return 0, false
	}
	return v[0], true
}

// floatsOf reads exactly n numbers from a DS/FD/FL/IS value.
func floatsOf(e *sd.Element, n int) ([]float64, bool) {
	if e == nil || e.Value == nil {
		return nil, false
	}
	var out []float64
	switch v := e.Value.GetValue().(type) {
	case []float64:
		out = v
	case []int:
		for _, x := range v {
			out = append(out, float64(x))
		}
	case []byte:
		for _, s := range strings.Split(str(e), "\\") {
			f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
			if err != nil {
				return nil, false
			}
			out = append(out, f)
		}
	case []string:
		for _, s := range v {
			f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
			if err != nil {
				return nil, false
			}
			out = append(out, f)
		}
	}
	if len(out) != n {
		return nil, false
	}
	for _, x := range out {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, false
		}
	}
	return out, true
}

func parse(data []byte) (ds sd.Dataset, err error) {
	// The parser is outside code reading outside bytes: a panic in it must
	// fail this instance, not the server.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("parser failed: %v", r)
		}
	}()
	return sd.Parse(bytes.NewReader(data), int64(len(data)), nil,
		sd.SkipProcessingPixelDataValue(), sd.AllowMissingMetaElementGroupLength(), sd.AllowUnknownSpecificCharacterSet())
}
