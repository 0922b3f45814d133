package dicomout

import (
	"encoding/binary"
	"fmt"

	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/voxserve/voxserve/internal/par"
)

// Segment is one label of a label map.
type Segment struct {
	Label       string
	Category    Code // SegmentedPropertyCategoryCodeSequence
	Type        Code // SegmentedPropertyTypeCodeSequence
	Description string
	// Omit leaves the value out of the SEG: a model's background class,
	// whose voxels are background anyway. Segment numbers skip it.
	Omit bool
}

// LabelMap is a mask on the source grid: voxel value i+1 marks
// Segments[i], 0 is background. Voxels are z-major ([slices][rows][cols]).
type LabelMap struct {
	Voxels   []uint8
	Segments []Segment
	// Fractions, when set, hold each segment's probability (0..255, one
	// slice per segment, laid out like Voxels): the SEG is then FRACTIONAL.
	Fractions [][]uint8
}

// MaxFractionalValue stands for probability 1 in a fractional SEG.
const MaxFractionalValue = 255

// SegInfo says what a SEG holds, for the SR that references it.
type SegInfo struct {
	Object
	// Numbers maps a segment label to its Segment Number.
	Numbers map[string]int
	Frames  int
}

// SEG encodes label maps as one DICOM Segmentation of the source series
// (binary, or fractional when a label map carries Fractions), one segment
// per label, frames on the source slices.
//
// A cross-sectional source must have a Frame of Reference: each frame
// carries its Plane Position and the shared Plane Orientation of the
// source, so viewers overlay it exactly. A projection image (DX, CR) has no
// patient-space plane; its frames are tied to the source by the Derivation
// Image references alone.
func SEG(src Source, maps []LabelMap, alg Algorithm, opt Options) (*SegInfo, error) {
	if err := checkSource(&src, "SEG"); err != nil {
		return nil, err
	}
	nz, ny, nx := src.Dims[0], src.Dims[1], src.Dims[2]
	plane := ny * nx
	if len(src.Instances) != nz {
		return nil, fmt.Errorf("SEG: %d source instances for %d slices", len(src.Instances), nz)
	}
	if !src.Projection && src.FrameOfReferenceUID == "" {
		return nil, &MissingError{Object: "SEG", Tag: "(0020,0052) Frame of Reference UID",
			Why: "the frames of a cross-sectional series are placed in its frame of reference"}
	}
	var segs []Segment
	fractional := false
	for i, m := range maps {
		if len(m.Voxels) != nz*plane {
			return nil, fmt.Errorf("SEG: label map %d has %d voxels for %dx%dx%d", i, len(m.Voxels), nx, ny, nz)
		}
		if len(m.Segments) == 0 || len(m.Segments) > 255 {
			return nil, fmt.Errorf("SEG: label map %d has %d segments (1..255)", i, len(m.Segments))
		}
		if m.Fractions != nil {
			fractional = true
			if len(m.Fractions) != len(m.Segments) {
				return nil, fmt.Errorf("SEG: label map %d has %d fraction maps for %d segments", i, len(m.Fractions), len(m.Segments))
			}
			for j, f := range m.Fractions {
				if len(f) != nz*plane {
					return nil, fmt.Errorf("SEG: label map %d segment %d has %d fractions for %d voxels", i, j, len(f), nz*plane)
				}
			}
		}
		kept := 0
		for _, sg := range m.Segments {
			if !sg.Omit {
				segs = append(segs, sg)
				kept++
			}
		}
		if kept == 0 {
			return nil, fmt.Errorf("SEG: label map %d has no segment that is not omitted", i)
		}
	}
	if len(segs) == 0 {
		return nil, fmt.Errorf("SEG: no label maps")
	}

	// Frames: segment-major, then source slice order.
	type frame struct{ seg, m, value, k int }
	var frames []frame
	// empty says whether segment value of map m has nothing on slice k.
	empty := func(m LabelMap, value, k int) bool {
		if m.Fractions != nil {
			return !anyNonZero(m.Fractions[value-1][k*plane : (k+1)*plane])
		}
		return !anyValue(m.Voxels[k*plane:(k+1)*plane], uint8(value))
	}
	// Which (segment, slice) frames are empty, found in parallel: a scan of
	// every mask voxel.
	var isEmpty []bool
	if opt.OmitEmptyFrames {
		isEmpty = make([]bool, len(segs)*nz)
		type ref struct{ m, value int }
		var refs []ref
		for mi, m := range maps {
			for si, sg := range m.Segments {
				if !sg.Omit {
					refs = append(refs, ref{mi, si + 1})
				}
			}
		}
		par.Each(len(isEmpty), func(i int) {
			r := refs[i/nz]
			isEmpty[i] = empty(maps[r.m], r.value, i%nz)
		})
	}
	build := func(omit bool) {
		frames = frames[:0]
		n := 0
		for mi, m := range maps {
			for si, sg := range m.Segments {
				if sg.Omit {
					continue
				}
				n++
				for k := 0; k < nz; k++ {
					if omit && isEmpty[(n-1)*nz+k] {
						continue
					}
					frames = append(frames, frame{seg: n, m: mi, value: si + 1, k: k})
				}
			}
		}
	}
	build(opt.OmitEmptyFrames)
	if len(frames) == 0 { // every segment empty: keep the frames rather than write none
		build(false)
	}

	var pix []byte
	if fractional {
		// 8 bits per pixel: the probability, 0..MaxFractionalValue; a
		// binary map among fractional ones is 0 or the maximum.
		pix = make([]byte, len(frames)*plane+(len(frames)*plane)%2)
		for f, fr := range frames {
			dst := pix[f*plane : (f+1)*plane]
			if m := maps[fr.m]; m.Fractions != nil {
				copy(dst, m.Fractions[fr.value-1][fr.k*plane:(fr.k+1)*plane])
				continue
			}
			for p, v := range maps[fr.m].Voxels[fr.k*plane : (fr.k+1)*plane] {
				if v == uint8(fr.value) {
					dst[p] = MaxFractionalValue
				}
			}
		}
	} else {
		// 1 bit per pixel, LSB first, frames packed back to back.
		bits := len(frames) * plane
		pix = make([]byte, (bits+7)/8+((bits+7)/8)%2)
		pack := func(f int) {
			fr := frames[f]
			packBits(pix, f*plane, maps[fr.m].Voxels[fr.k*plane:(fr.k+1)*plane], uint8(fr.value))
		}
		if plane%8 == 0 {
			par.Each(len(frames), pack) // frames start on byte boundaries: no shared bytes
		} else {
			for f := range frames {
				pack(f)
			}
		}
	}

	sopUID, seriesUID := opt.UIDs.New(), opt.UIDs.New()
	it := &item{}
	num := opt.SeriesNumber
	if num == 0 {
		num = 9002
	}
	common(it, &src, alg, &opt, SegmentationStorage, sopUID, seriesUID, "SEG", "segmentation", num)

	// Segmentation Image module.
	it.str(tag.ImageType, "DERIVED", "PRIMARY")
	it.str(tag.ContentLabel, csValue(alg.Name+"_SEG"))
	it.str(tag.ContentDescription, truncate("AI segmentation by "+alg.Name+" "+alg.Version+", unverified", 64))
	it.str(tag.ContentCreatorName)
	bitsAllocated := 1
	if fractional {
		bitsAllocated = 8
		it.str(tag.SegmentationType, "FRACTIONAL")
		it.str(tag.SegmentationFractionalType, "PROBABILITY")
		it.add(tag.MaximumFractionalValue, []int{MaxFractionalValue})
		it.str(tag.SegmentsOverlap, "UNDEFINED") // probabilities of several labels may share a pixel
	} else {
		it.str(tag.SegmentationType, "BINARY")
		it.str(tag.SegmentsOverlap, "NO") // segments come from label maps
	}
	it.add(tag.SamplesPerPixel, []int{1})
	it.str(tag.PhotometricInterpretation, "MONOCHROME2")
	it.add(tag.Rows, []int{ny})
	it.add(tag.Columns, []int{nx})
	it.add(tag.BitsAllocated, []int{bitsAllocated})
	it.add(tag.BitsStored, []int{bitsAllocated})
	it.add(tag.HighBit, []int{bitsAllocated - 1})
	it.add(tag.PixelRepresentation, []int{0})
	it.str(tag.LossyImageCompression, "00")
	it.str(tag.NumberOfFrames, fmt.Sprint(len(frames)))
	it.str(tag.BodyPartExamined, src.BodyPart)

	numbers := map[string]int{}
	var segItems []*item
	for i, s := range segs {
		si := &item{}
		si.add(tag.SegmentNumber, []int{i + 1})
		si.str(tag.SegmentLabel, truncate(s.Label, 64))
		if s.Description != "" {
			si.str(tag.SegmentDescription, truncate(s.Description, 64))
		}
		si.str(tag.SegmentAlgorithmType, "AUTOMATIC")
		si.str(tag.SegmentAlgorithmName, truncate(alg.Name+" "+alg.Version, 64))
		si.seq(tag.SegmentedPropertyCategoryCodeSequence, codeItem(s.Category))
		si.seq(tag.SegmentedPropertyTypeCodeSequence, codeItem(s.Type))
		segItems = append(segItems, si)
		numbers[s.Label] = i + 1
	}
	it.seq(tag.SegmentSequence, segItems...)

	// Frame of Reference and the Multi-frame Dimension module.
	dimUID := opt.UIDs.New()
	dims := []*item{dimIndex(tag.ReferencedSegmentNumber, tag.SegmentIdentificationSequence, dimUID, "ReferencedSegmentNumber")}
	if !src.Projection {
		it.str(tag.FrameOfReferenceUID, src.FrameOfReferenceUID)
		it.str(tag.PositionReferenceIndicator)
		dims = append(dims, dimIndex(tag.ImagePositionPatient, tag.PlanePositionSequence, dimUID, "ImagePositionPatient"))
	}
	org := &item{}
	org.str(tag.DimensionOrganizationUID, dimUID)
	it.seq(tag.DimensionOrganizationSequence, org)
	it.seq(tag.DimensionIndexSequence, dims...)

	// Shared functional groups: pixel measures and, in patient space, the
	// source orientation.
	d := src.Direction
	shared := &item{}
	if src.Projection {
		// No plane in patient space: Pixel Measures would need a slice
		// thickness the source does not have. Patient Orientation is Type
		// 2C when there is no Image Orientation (Patient).
		it.str(tag.PatientOrientation)
	} else {
		pm := &item{}
		pm.str(tag.PixelSpacing, decimals(src.Spacing[1], src.Spacing[0])...)
		pm.str(tag.SliceThickness, decimal(src.Spacing[2]))
		pm.str(tag.SpacingBetweenSlices, decimal(src.Spacing[2]))
		shared.seq(tag.PixelMeasuresSequence, pm)
		po := &item{}
		po.str(tag.ImageOrientationPatient, decimals(d[0], d[1], d[2], d[3], d[4], d[5])...)
		shared.seq(tag.PlaneOrientationSequence, po)
	}
	it.seq(tag.SharedFunctionalGroupsSequence, shared)

	// Per-frame functional groups.
	multi := map[string]int{}
	for _, in := range src.Instances {
		multi[in.SOPInstanceUID]++
	}
	perFrame := make([]*item, len(frames))
	for f, fr := range frames {
		pf := &item{}
		ref := src.Instances[fr.k]
		srcImg := &item{}
		srcImg.str(tag.ReferencedSOPClassUID, ref.SOPClassUID)
		srcImg.str(tag.ReferencedSOPInstanceUID, ref.SOPInstanceUID)
		if multi[ref.SOPInstanceUID] > 1 {
			srcImg.str(tag.ReferencedFrameNumber, fmt.Sprint(ref.Frame))
		}
		srcImg.str(tag.SpatialLocationsPreserved, "YES") // frames lie on the source grid
		srcImg.seq(tag.PurposeOfReferenceCodeSequence, codeItem(Code{"121322", "DCM", "Source image for image processing operation"}))
		der := &item{}
		der.seq(tag.DerivationCodeSequence, codeItem(Code{"113076", "DCM", "Segmentation"}))
		der.seq(tag.SourceImageSequence, srcImg)
		pf.seq(tag.DerivationImageSequence, der)

		fc := &item{}
		if src.Projection {
			fc.add(tag.DimensionIndexValues, []int{fr.seg})
		} else {
			fc.add(tag.DimensionIndexValues, []int{fr.seg, fr.k + 1})
			z := float64(fr.k) * src.Spacing[2]
			pos := &item{}
			pos.str(tag.ImagePositionPatient, decimals(src.Origin[0]+z*d[6], src.Origin[1]+z*d[7], src.Origin[2]+z*d[8])...)
			pf.seq(tag.PlanePositionSequence, pos)
		}
		pf.seq(tag.FrameContentSequence, fc)
		sid := &item{}
		sid.add(tag.ReferencedSegmentNumber, []int{fr.seg})
		pf.seq(tag.SegmentIdentificationSequence, sid)
		perFrame[f] = pf
	}
	it.seq(tag.PerFrameFunctionalGroupsSequence, perFrame...)
	it.seq(tag.ReferencedSeriesSequence, referencedSeries(&src))
	b, err := it.encode(SegmentationStorage, sopUID, pix)
	if err != nil {
		return nil, fmt.Errorf("SEG: encoding: %w", err)
	}
	return &SegInfo{Object: Object{Bytes: b, SOPClassUID: SegmentationStorage, SOPInstanceUID: sopUID, SeriesUID: seriesUID},
		Numbers: numbers, Frames: len(frames)}, nil
}

func dimIndex(pointer, group tag.Tag, orgUID, label string) *item {
	it := &item{}
	it.add(tag.DimensionIndexPointer, []int{int(pointer.Group), int(pointer.Element)})
	it.add(tag.FunctionalGroupPointer, []int{int(group.Group), int(group.Element)})
	it.str(tag.DimensionOrganizationUID, orgUID)
	it.str(tag.DimensionDescriptionLabel, label)
	return it
}

// packBits sets bit off+p of dst (LSB first) for every voxel p equal to
// value. Masks are mostly background: eight voxels at a time are skipped
// with one load when none can match.
func packBits(dst []byte, off int, vox []uint8, value uint8) {
	p := 0
	if off%8 == 0 && value != 0 {
		out := dst[off/8:]
		for ; p+8 <= len(vox); p += 8 {
			if binary.LittleEndian.Uint64(vox[p:]) == 0 {
				continue
			}
			var b byte
			for i, v := range vox[p : p+8] {
				if v == value {
					b |= 1 << i
				}
			}
			out[p/8] = b
		}
	}
	for ; p < len(vox); p++ {
		if vox[p] == value {
			b := off + p
			dst[b>>3] |= 1 << (b & 7)
		}
	}
}

func anyNonZero(vox []uint8) bool { return !allValue(vox, 0) }

func allValue(vox []uint8, v uint8) bool {
	for _, x := range vox {
		if x != v {
			return false
		}
	}
	return true
}

func anyValue(vox []uint8, v uint8) bool {
	if v != 0 { // skip background eight voxels at a time
		for len(vox) >= 8 && binary.LittleEndian.Uint64(vox) == 0 {
			vox = vox[8:]
		}
	}
	for _, x := range vox {
		if x == v {
			return true
		}
	}
	return false
}
