// Package dicomout writes voxserve's results as DICOM objects a PACS stores
// next to the study: a Comprehensive 3D SR measurement report (TID 1500)
// and a binary Segmentation, both following IHE AI Results (the algorithm
// in the Contributing Equipment Sequence, VerificationFlag UNVERIFIED,
// references to the source instances).
//
// Objects are encoded with github.com/suyashkumar/dicom in Explicit VR
// Little Endian. Patient and study attributes are copied verbatim from the
// source series (dicom.Subject) and never logged.
package dicomout

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	sd "github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/voxserve/voxserve/dicom"
)

// SOP classes written here.
const (
	SegmentationStorage  = "1.2.840.10008.5.1.4.1.1.66.4"
	Comprehensive3DSR    = "1.2.840.10008.5.1.4.1.1.88.34"
	explicitVRLittleEndn = "1.2.840.10008.1.2.1"
)

// item is one dataset (or sequence item) under construction. Values are
// kept by tag and sorted when encoded, as PS3.5 requires.
type item struct {
	elems []*sd.Element
	err   error
}

func (it *item) add(t tag.Tag, v any) {
	if it.err != nil {
		return
	}
	e, err := sd.NewElement(t, v)
	if err != nil {
		it.err = fmt.Errorf("%v: %w", t, err)
		return
	}
	it.elems = append(it.elems, e)
}

// str adds a string attribute (an empty one for Type 2 attributes).
func (it *item) str(t tag.Tag, vals ...string) {
	if len(vals) == 0 {
		vals = []string{""}
	}
	it.add(t, vals)
}

func (it *item) seq(t tag.Tag, items ...*item) {
	var v [][]*sd.Element
	for _, x := range items {
		if x.err != nil && it.err == nil {
			it.err = x.err
		}
		v = append(v, x.sorted())
	}
	if v == nil {
		v = [][]*sd.Element{} // an empty Type 2 sequence
	}
	it.add(t, v)
}

func (it *item) sorted() []*sd.Element {
	sort.SliceStable(it.elems, func(i, j int) bool {
		a, b := it.elems[i].Tag, it.elems[j].Tag
		return a.Group < b.Group || (a.Group == b.Group && a.Element < b.Element)
	})
	return it.elems
}

// encode writes the dataset as a Part 10 file with its meta header.
// pixels, when not nil, is appended as Pixel Data (OB): it is the last
// element by tag order, and writing it here spares the encoder two copies
// of a SEG's largest part.
func (it *item) encode(sopClass, sopInstance string, pixels []byte) ([]byte, error) {
	it.add(tag.FileMetaInformationVersion, []byte{0, 1})
	it.str(tag.MediaStorageSOPClassUID, sopClass)
	it.str(tag.MediaStorageSOPInstanceUID, sopInstance)
	it.str(tag.TransferSyntaxUID, explicitVRLittleEndn)
	it.str(tag.ImplementationClassUID, implementationUID)
	it.str(tag.ImplementationVersionName, "VOXSERVE")
	if it.err != nil {
		return nil, it.err
	}
	var buf bytes.Buffer
	buf.Grow(len(pixels) + 64<<10)
	if err := sd.Write(&buf, sd.Dataset{Elements: it.sorted()}, sd.SkipVRVerification()); err != nil {
		return nil, err
	}
	if pixels != nil {
		if len(pixels)%2 != 0 || int64(len(pixels)) > math.MaxUint32-1 {
			return nil, fmt.Errorf("pixel data of %d bytes: must be even and below 4 GiB", len(pixels))
		}
		// (7FE0,0010) OB, explicit VR little endian: tag, VR, 2 reserved bytes, 32-bit length.
		hdr := []byte{0xE0, 0x7F, 0x10, 0x00, 'O', 'B', 0, 0, 0, 0, 0, 0}
		binary.LittleEndian.PutUint32(hdr[8:], uint32(len(pixels)))
		buf.Write(hdr)
		buf.Write(pixels)
	}
	return buf.Bytes(), nil
}

// implementationUID identifies voxserve's writer in the meta header
// (a 2.25 UUID-derived UID: no registration needed).
const implementationUID = "2.25.142238826580958542735347012633305616633"

// Code is a coded concept (PS3.3 Table 8.8-1).
type Code struct {
	Value, Scheme, Meaning string
}

func codeItem(c Code) *item {
	it := &item{}
	if len(c.Value) > 16 {
		it.str(tag.LongCodeValue, c.Value)
	} else {
		it.str(tag.CodeValue, c.Value)
	}
	it.str(tag.CodingSchemeDesignator, c.Scheme)
	it.str(tag.CodeMeaning, truncate(c.Meaning, 64))
	return it
}

// truncate shortens s to at most n bytes without splitting a character.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// decimal formats v as a DICOM DS (at most 16 characters).
func decimal(v float64) string {
	for prec := 10; prec > 0; prec-- {
		s := strconv.FormatFloat(v, 'g', prec, 64)
		if len(s) <= 16 {
			return s
		}
	}
	return strconv.FormatFloat(v, 'e', 4, 64)
}

func decimals(vs ...float64) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = decimal(v)
	}
	return out
}

// Algorithm identifies the model that produced a result (IHE AI Results).
type Algorithm struct {
	Name    string // the bundle name
	Version string // the bundle version
	// Software is voxserve's version.
	Software string
	// DeviceUID is stable per bundle version (UIDs.Device).
	DeviceUID string
}

// Source is the series a result was computed on: what derived objects
// reference and where their frames lie.
type Source struct {
	StudyUID, SeriesUID, FrameOfReferenceUID string
	Modality, BodyPart                       string
	// Instances names the source of each volume slice, in volume order.
	Instances []dicom.SliceRef
	// Dims are [slices, rows, columns] of the source grid.
	Dims [3]int
	// Geometry places the source grid in patient space.
	Spacing    [3]float64 // x (columns), y (rows), z (slices)
	Origin     [3]float64
	Direction  [9]float64 // x, y, z axis unit vectors
	Projection bool       // a projection image (no patient-space plane)
	Subject    dicom.Subject
}

// SourceFromSeries describes an assembled series.
func SourceFromSeries(s *dicom.Series) Source {
	v := s.Volume
	return Source{
		StudyUID: s.StudyInstanceUID, SeriesUID: s.SeriesInstanceUID, FrameOfReferenceUID: s.FrameOfReference,
		Modality: s.Modality, BodyPart: s.BodyPart, Instances: s.Slices,
		Dims:    [3]int{int(v.Dims[0]), int(v.Dims[1]), int(v.Dims[2])},
		Spacing: v.Geometry.Spacing, Origin: v.Geometry.Origin, Direction: v.Geometry.Direction,
		Projection: s.Projection, Subject: s.Subject,
	}
}

// MissingError is a source attribute a derived object needs; it names the
// tag.
type MissingError struct {
	Object string // "SR" or "SEG"
	Tag    string // e.g. "(0020,0052) Frame of Reference UID"
	Why    string
}

func (e *MissingError) Error() string {
	return fmt.Sprintf("the source series lacks %s, which a DICOM %s needs: %s", e.Tag, e.Object, e.Why)
}

// checkSource verifies what every derived object needs.
func checkSource(src *Source, object string) error {
	miss := func(t, why string) error { return &MissingError{Object: object, Tag: t, Why: why} }
	switch {
	case src.StudyUID == "":
		return miss("(0020,000D) Study Instance UID", "the object must belong to the source study")
	case src.SeriesUID == "":
		return miss("(0020,000E) Series Instance UID", "the object references the source series")
	case len(src.Instances) == 0:
		return miss("(0008,0018) SOP Instance UID", "the object references the source instances")
	}
	for i, in := range src.Instances {
		if in.SOPInstanceUID == "" {
			return miss("(0008,0018) SOP Instance UID", fmt.Sprintf("slice %d has none to reference", i))
		}
		if in.SOPClassUID == "" {
			return miss("(0008,0016) SOP Class UID", fmt.Sprintf("slice %d has none to reference", i))
		}
	}
	return nil
}

// Options are the site's choices for derived objects.
type Options struct {
	UIDs UIDs
	// SeriesNumber of the new series; 0 picks a default (SR 9001, SEG 9002).
	SeriesNumber int
	// OmitEmptyFrames leaves out SEG frames with no segmented pixel; kept
	// by default because some viewers need one frame per source slice.
	OmitEmptyFrames bool
	// Now stamps content and instance creation; zero means time.Now.
	Now time.Time
}

func (o *Options) now() time.Time {
	if o.Now.IsZero() {
		return time.Now()
	}
	return o.Now
}

// common adds the modules SR and SEG share: SOP Common (with the
// algorithm as Contributing Equipment), Patient and General Study (copied),
// General Series, General and Enhanced General Equipment.
func common(it *item, src *Source, alg Algorithm, opt *Options, sopClass, sopUID, seriesUID, modality, what string, seriesNumber int) {
	now := opt.now()
	date, tm := now.Format("20060102"), now.Format("150405")
	it.str(tag.SOPClassUID, sopClass)
	it.str(tag.SOPInstanceUID, sopUID)
	it.str(tag.InstanceCreationDate, date)
	it.str(tag.InstanceCreationTime, tm)
	it.str(tag.ContentDate, date)
	it.str(tag.ContentTime, tm)

	// Patient and General Study modules: verbatim from the source; Type 2
	// attributes the source lacks are written empty.
	have := map[tag.Tag]bool{}
	for _, a := range src.Subject.Attrs() {
		it.str(a.Tag, a.Values...)
		have[a.Tag] = true
	}
	for _, t := range []tag.Tag{tag.PatientName, tag.PatientID, tag.PatientBirthDate, tag.PatientSex,
		tag.StudyDate, tag.StudyTime, tag.ReferringPhysicianName, tag.StudyID, tag.AccessionNumber} {
		if !have[t] {
			it.str(t)
		}
	}
	it.str(tag.StudyInstanceUID, src.StudyUID)

	it.str(tag.Modality, modality)
	it.str(tag.SeriesInstanceUID, seriesUID)
	it.str(tag.SeriesNumber, strconv.Itoa(seriesNumber))
	it.str(tag.InstanceNumber, "1")
	it.str(tag.SeriesDescription, truncate(fmt.Sprintf("AI %s %s v%s - not for diagnostic use", what, alg.Name, alg.Version), 64))

	// General and Enhanced General Equipment: voxserve made the object.
	it.str(tag.Manufacturer, "voxserve")
	it.str(tag.ManufacturerModelName, truncate(alg.Name, 64))
	it.str(tag.DeviceSerialNumber, truncate(alg.DeviceUID, 64))
	it.str(tag.SoftwareVersions, truncate("voxserve "+alg.Software, 64), truncate(alg.Name+" "+alg.Version, 64))

	// IHE AI Results: the algorithm as contributing processing equipment.
	eq := &item{}
	eq.str(tag.Manufacturer, "voxserve")
	eq.str(tag.ManufacturerModelName, truncate(alg.Name, 64))
	eq.str(tag.SoftwareVersions, truncate(alg.Name+" "+alg.Version, 64))
	eq.str(tag.DeviceUID, alg.DeviceUID)
	eq.str(tag.ContributionDateTime, now.Format("20060102150405"))
	eq.str(tag.ContributionDescription, truncate("AI model "+alg.Name+" version "+alg.Version+" served by voxserve "+alg.Software, 64))
	eq.seq(tag.PurposeOfReferenceCodeSequence, codeItem(Code{"109102", "DCM", "Processing Equipment"}))
	it.seq(tag.ContributingEquipmentSequence, eq)
}

// referencedSeries lists the source instances once each (a multi-frame
// source appears once).
func referencedSeries(src *Source) *item {
	s := &item{}
	s.str(tag.SeriesInstanceUID, src.SeriesUID)
	var refs []*item
	seen := map[string]bool{}
	for _, in := range src.Instances {
		if seen[in.SOPInstanceUID] {
			continue
		}
		seen[in.SOPInstanceUID] = true
		r := &item{}
		r.str(tag.ReferencedSOPClassUID, in.SOPClassUID)
		r.str(tag.ReferencedSOPInstanceUID, in.SOPInstanceUID)
		refs = append(refs, r)
	}
	s.seq(tag.ReferencedInstanceSequence, refs...)
	return s
}

// Object is one encoded DICOM instance.
type Object struct {
	Bytes          []byte
	SOPClassUID    string
	SOPInstanceUID string
	SeriesUID      string
}

// csValue makes s a valid Code String (upper case, digits, underscore).
func csValue(s string) string {
	s = strings.ToUpper(s)
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_':
			b.WriteRune(r)
		case r == ' ' || r == '-':
			b.WriteRune('_')
		}
	}
	return truncate(b.String(), 16)
}

type sliceRef = dicom.SliceRef
