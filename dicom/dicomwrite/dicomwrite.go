// Package dicomwrite writes DICOM image instances with known geometry and
// pixel values, for tests, benchmarks and the phantom generator.
package dicomwrite

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"

	sd "github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
)

// CTImageStorage is the SOP Class UID of classic CT images.
const CTImageStorage = "1.2.840.10008.5.1.4.1.1.2"

// Slice describes one single-frame grayscale instance.
type Slice struct {
	StudyUID, SeriesUID, SOPUID, FrameOfReferenceUID string
	SOPClassUID                                      string // default CT Image Storage
	Modality, BodyPart                               string
	TransferSyntax                                   string // default Explicit VR Little Endian
	Rows, Cols                                       int
	// Stored values, row-major; written as 16-bit words.
	Pixels              []int32
	PixelRepresentation int // 1: signed (default for CT), 0: unsigned
	BitsStored          int // default 16
	Photometric         string
	Position            [3]float64
	Orientation         [6]float64
	PixelSpacing        [2]float64 // row spacing, column spacing
	SliceThickness      float64
	Slope, Intercept    float64
	InstanceNumber      int
	// Patient and study attributes, written when set (synthetic values
	// only: phantoms carry made-up names so the copy into SR/SEG is tested).
	PatientName, PatientID, StudyDate string
	// Omit lists tags to leave out (to test missing attributes).
	Omit []tag.Tag
}

func ds(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// Encode writes s as a Part 10 file.
func Encode(s Slice) ([]byte, error) {
	if s.SOPClassUID == "" {
		s.SOPClassUID = CTImageStorage
	}
	if s.TransferSyntax == "" {
		s.TransferSyntax = "1.2.840.10008.1.2.1"
	}
	if s.Photometric == "" {
		s.Photometric = "MONOCHROME2"
	}
	if s.BitsStored == 0 {
		s.BitsStored = 16
	}
	if s.Slope == 0 {
		s.Slope = 1
	}
	if len(s.Pixels) != s.Rows*s.Cols {
		return nil, fmt.Errorf("dicomtest: %d pixels for %dx%d", len(s.Pixels), s.Rows, s.Cols)
	}
	var bo binary.ByteOrder = binary.LittleEndian
	if s.TransferSyntax == "1.2.840.10008.1.2.2" {
		bo = binary.BigEndian
	}
	pix := make([]byte, 2*len(s.Pixels))
	for i, v := range s.Pixels {
		bo.PutUint16(pix[2*i:], uint16(v))
	}
	omit := map[tag.Tag]bool{}
	for _, t := range s.Omit {
		omit[t] = true
	}
	var elems []*sd.Element
	var err error
	add := func(t tag.Tag, v any) {
		if omit[t] || err != nil {
			return
		}
		var e *sd.Element
		if e, err = sd.NewElement(t, v); err == nil {
			elems = append(elems, e)
		}
	}
	add(tag.MediaStorageSOPClassUID, []string{s.SOPClassUID})
	add(tag.MediaStorageSOPInstanceUID, []string{s.SOPUID})
	add(tag.TransferSyntaxUID, []string{s.TransferSyntax})
	add(tag.SOPClassUID, []string{s.SOPClassUID})
	add(tag.SOPInstanceUID, []string{s.SOPUID})
	add(tag.Modality, []string{s.Modality})
	add(tag.StudyInstanceUID, []string{s.StudyUID})
	add(tag.SeriesInstanceUID, []string{s.SeriesUID})
	for _, a := range []struct {
		t tag.Tag
		v string
	}{{tag.PatientName, s.PatientName}, {tag.PatientID, s.PatientID}, {tag.StudyDate, s.StudyDate}} {
		if a.v != "" {
			add(a.t, []string{a.v})
		}
	}
	add(tag.FrameOfReferenceUID, []string{s.FrameOfReferenceUID})
	add(tag.BodyPartExamined, []string{s.BodyPart})
	add(tag.InstanceNumber, []string{strconv.Itoa(s.InstanceNumber)})
	add(tag.ImagePositionPatient, []string{ds(s.Position[0]), ds(s.Position[1]), ds(s.Position[2])})
	o := s.Orientation
	add(tag.ImageOrientationPatient, []string{ds(o[0]), ds(o[1]), ds(o[2]), ds(o[3]), ds(o[4]), ds(o[5])})
	add(tag.PixelSpacing, []string{ds(s.PixelSpacing[0]), ds(s.PixelSpacing[1])})
	if s.SliceThickness > 0 {
		add(tag.SliceThickness, []string{ds(s.SliceThickness)})
	}
	add(tag.SamplesPerPixel, []int{1})
	add(tag.PhotometricInterpretation, []string{s.Photometric})
	add(tag.Rows, []int{s.Rows})
	add(tag.Columns, []int{s.Cols})
	add(tag.BitsAllocated, []int{16})
	add(tag.BitsStored, []int{s.BitsStored})
	add(tag.HighBit, []int{s.BitsStored - 1})
	add(tag.PixelRepresentation, []int{s.PixelRepresentation})
	add(tag.RescaleIntercept, []string{ds(s.Intercept)})
	add(tag.RescaleSlope, []string{ds(s.Slope)})
	add(tag.PixelData, sd.PixelDataInfo{IntentionallyUnprocessed: true, UnprocessedValueData: pix})
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := sd.Write(&buf, sd.Dataset{Elements: elems}, sd.SkipVRVerification()); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Series is a stack of slices with shared geometry.
type Series struct {
	Rows, Cols  int
	Slices      int
	Spacing     [3]float64 // x (column), y (row), z (between slices), mm
	Origin      [3]float64
	Orientation [6]float64 // row direction, column direction
	Slope       float64
	Intercept   float64
	Modality    string
	BodyPart    string
	Photometric string
	Unsigned    bool
	Syntax      string
	StudyUID    string
	SeriesUID   string
	SOPClassUID string  // default CT Image Storage
	Thickness   float64 // Slice Thickness; default Spacing[2]
	BitsStored  int     // default 16
	Omit        []tag.Tag
	// Patient and study attributes (synthetic), written when set.
	PatientName, PatientID, StudyDate string
	// Value gives the stored value of voxel (i column, j row, k slice).
	Value func(i, j, k int) int32
}

// Normal is the slice normal (row x column).
func (s Series) Normal() [3]float64 {
	r := [3]float64{s.Orientation[0], s.Orientation[1], s.Orientation[2]}
	c := [3]float64{s.Orientation[3], s.Orientation[4], s.Orientation[5]}
	return [3]float64{r[1]*c[2] - r[2]*c[1], r[2]*c[0] - r[0]*c[2], r[0]*c[1] - r[1]*c[0]}
}

// Slice returns the description of slice k.
func (s Series) Slice(k int) Slice {
	n := s.Normal()
	pix := make([]int32, s.Rows*s.Cols)
	for j := 0; j < s.Rows; j++ {
		for i := 0; i < s.Cols; i++ {
			pix[j*s.Cols+i] = s.Value(i, j, k)
		}
	}
	pr := 1
	if s.Unsigned {
		pr = 0
	}
	z := float64(k) * s.Spacing[2]
	thick := s.Thickness
	if thick == 0 {
		thick = s.Spacing[2]
	}
	return Slice{
		SOPClassUID: s.SOPClassUID, BitsStored: s.BitsStored, Omit: s.Omit,
		PatientName: s.PatientName, PatientID: s.PatientID, StudyDate: s.StudyDate,
		StudyUID: s.StudyUID, SeriesUID: s.SeriesUID, SOPUID: fmt.Sprintf("%s.%d", s.SeriesUID, k+1),
		FrameOfReferenceUID: s.StudyUID + ".9", Modality: s.Modality, BodyPart: s.BodyPart, TransferSyntax: s.Syntax,
		Rows: s.Rows, Cols: s.Cols, Pixels: pix, PixelRepresentation: pr, Photometric: s.Photometric,
		Position:     [3]float64{s.Origin[0] + z*n[0], s.Origin[1] + z*n[1], s.Origin[2] + z*n[2]},
		Orientation:  s.Orientation,
		PixelSpacing: [2]float64{s.Spacing[1], s.Spacing[0]}, SliceThickness: thick,
		Slope: s.Slope, Intercept: s.Intercept, InstanceNumber: k + 1,
	}
}

// Encode writes every slice; files[k] is slice k.
func (s Series) Encode() ([][]byte, error) {
	out := make([][]byte, s.Slices)
	for k := range out {
		b, err := Encode(s.Slice(k))
		if err != nil {
			return nil, err
		}
		out[k] = b
	}
	return out, nil
}

// EnhancedCTImageStorage is the SOP Class UID of enhanced (multi-frame) CT.
const EnhancedCTImageStorage = "1.2.840.10008.5.1.4.1.1.2.1"

// EncodeEnhanced writes the series as one multi-frame instance with
// per-frame Plane Position and shared orientation, pixel measures and
// rescale (PS3.3 C.7.6.16), in the given frame order.
func (s Series) EncodeEnhanced(order []int) ([]byte, error) {
	first := s.Slice(0)
	mk := func(t tag.Tag, v any) *sd.Element {
		e, err := sd.NewElement(t, v)
		if err != nil {
			panic(err) // only fixed, valid values reach here
		}
		return e
	}
	o := s.Orientation
	shared := []*sd.Element{
		mk(tag.PlaneOrientationSequence, [][]*sd.Element{{mk(tag.ImageOrientationPatient, []string{ds(o[0]), ds(o[1]), ds(o[2]), ds(o[3]), ds(o[4]), ds(o[5])})}}),
		mk(tag.PixelMeasuresSequence, [][]*sd.Element{{
			mk(tag.PixelSpacing, []string{ds(s.Spacing[1]), ds(s.Spacing[0])}),
			mk(tag.SliceThickness, []string{ds(s.Spacing[2])})}}),
		mk(tag.PixelValueTransformationSequence, [][]*sd.Element{{
			mk(tag.RescaleIntercept, []string{ds(s.Intercept)}),
			mk(tag.RescaleSlope, []string{ds(s.Slope)})}}),
	}
	var perFrame [][]*sd.Element
	pix := make([]byte, 0, 2*s.Rows*s.Cols*len(order))
	for _, k := range order {
		sl := s.Slice(k)
		p := sl.Position
		perFrame = append(perFrame, []*sd.Element{
			mk(tag.PlanePositionSequence, [][]*sd.Element{{mk(tag.ImagePositionPatient, []string{ds(p[0]), ds(p[1]), ds(p[2])})}}),
		})
		for _, v := range sl.Pixels {
			pix = binary.LittleEndian.AppendUint16(pix, uint16(v))
		}
	}
	uid := s.SeriesUID + ".100"
	elems := []*sd.Element{
		mk(tag.MediaStorageSOPClassUID, []string{EnhancedCTImageStorage}),
		mk(tag.MediaStorageSOPInstanceUID, []string{uid}),
		mk(tag.TransferSyntaxUID, []string{"1.2.840.10008.1.2.1"}),
		mk(tag.SOPClassUID, []string{EnhancedCTImageStorage}),
		mk(tag.SOPInstanceUID, []string{uid}),
		mk(tag.Modality, []string{s.Modality}),
		mk(tag.StudyInstanceUID, []string{s.StudyUID}),
		mk(tag.SeriesInstanceUID, []string{s.SeriesUID}),
		mk(tag.FrameOfReferenceUID, []string{first.FrameOfReferenceUID}),
		mk(tag.BodyPartExamined, []string{s.BodyPart}),
		mk(tag.SamplesPerPixel, []int{1}),
		mk(tag.PhotometricInterpretation, []string{"MONOCHROME2"}),
		mk(tag.NumberOfFrames, []string{strconv.Itoa(len(order))}),
		mk(tag.Rows, []int{s.Rows}),
		mk(tag.Columns, []int{s.Cols}),
		mk(tag.BitsAllocated, []int{16}),
		mk(tag.BitsStored, []int{16}),
		mk(tag.HighBit, []int{15}),
		mk(tag.PixelRepresentation, []int{1}),
		mk(tag.SharedFunctionalGroupsSequence, [][]*sd.Element{shared}),
		mk(tag.PerFrameFunctionalGroupsSequence, perFrame),
		mk(tag.PixelData, sd.PixelDataInfo{IntentionallyUnprocessed: true, UnprocessedValueData: pix}),
	}
	var buf bytes.Buffer
	if err := sd.Write(&buf, sd.Dataset{Elements: elems}, sd.SkipVRVerification()); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
