package dicom

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"unsafe"

	"github.com/voxserve/voxserve/internal/par"
	"github.com/voxserve/voxserve/tensor"
	"github.com/voxserve/voxserve/volume"
)

// Options control series assembly.
type Options struct {
	// StrictSpacing makes missing slices, uneven spacing and sheared stacks
	// errors; otherwise they are reported in Series.Problems.
	StrictSpacing bool
	// SpacingTolerance is the largest gap deviation, in mm, that still counts
	// as even (default 0.05 mm, about DICOM's decimal-string precision).
	SpacingTolerance float64
	// Voxels, if set, provides the memory each volume's float32 values are
	// decoded into, and the function that gives it back: page-locked
	// memory from a GPU, so that the volume's upload to the device runs
	// at full speed and asynchronously, with no staging copy. The series
	// then holds it until Release. nil: Go memory.
	Voxels func(n int) (v []float32, release func())
	// Stored, if set, provides memory for int16 stored values: a series
	// whose slices are all native 16-bit data that fits int16, MONOCHROME2,
	// with one rescale slope and intercept, keeps its stored values and
	// the rescale (volume.Volume.Rescale) instead of float32 values. A GPU
	// then uploads half the bytes, and the fused kernel rescales as it
	// reads. Other series decode to float32 as usual.
	Stored func(n int) (v []int16, release func())
}

func (o Options) tolerance() float64 {
	if o.SpacingTolerance > 0 {
		return o.SpacingTolerance
	}
	return 0.05
}

// SliceRef names the instance (and frame, for multi-frame objects) that
// one slice of a volume came from.
type SliceRef struct {
	SOPInstanceUID string
	SOPClassUID    string
	Frame          int // 1-based frame number; 1 for single-frame instances
}

// Series is one assembled image series.
type Series struct {
	StudyInstanceUID  string
	SeriesInstanceUID string
	FrameOfReference  string
	Modality          string
	BodyPart          string
	Manufacturer      string
	SliceThickness    float64
	KVP               float64
	TransferSyntax    string
	// Slices lists the source of each volume slice, in volume order.
	Slices []SliceRef
	// Volume holds float32 values after the modality LUT (HU for CT).
	Volume *volume.Volume
	// Problems are geometry findings that did not stop assembly.
	Problems []string
	// Subject is the first instance's patient and study attributes.
	Subject Subject
	// Projection marks a single image without patient-space orientation
	// (DX, CR): it has no slice geometry to place derived frames on.
	Projection bool
	// release gives back the volume's memory from Options.Voxels.
	release func()
}

// Release gives the volume's memory back when it came from
// Options.Voxels; the volume must not be used after it. It does nothing
// for Go memory, and a second call does nothing.
func (s *Series) Release() {
	if s != nil && s.release != nil {
		s.release()
		s.release = nil
		s.Volume = nil
	}
}

// ReleaseAll releases every series in list.
func ReleaseAll(list []*Series) {
	for _, s := range list {
		s.Release()
	}
}

// Skipped is an input that was not part of any series, and why.
type Skipped struct {
	Source string
	Reason string
}

// Input is one DICOM file's bytes and the name errors use for it.
type Input struct {
	Source string
	Data   []byte
}

// IsDICOM reports whether data carries the Part 10 preamble marker.
func IsDICOM(data []byte) bool {
	return len(data) >= 132 && bytes.Equal(data[128:132], []byte("DICM"))
}

// ReadStudy reads instances and assembles every image series among them.
// Non-DICOM files and non-image objects (DICOMDIR, SR, SEG, presentation
// states) are skipped and listed; a DICOM image that cannot be read is an
// error, since silently dropping it would drop a slice.
func ReadStudy(inputs []Input, opts Options) ([]*Series, []Skipped, error) {
	instances := make([]*Instance, len(inputs))
	errs := make([]error, len(inputs))
	par.Each(len(inputs), func(i int) {
		instances[i], errs[i] = Read(inputs[i].Source, inputs[i].Data)
	})
	var skipped []Skipped
	var good []*Instance
	for i, in := range instances {
		if err := errs[i]; err != nil {
			if reason, skip := Skippable(inputs[i], err); skip {
				skipped = append(skipped, Skipped{inputs[i].Source, reason})
				continue
			}
			return nil, skipped, err
		}
		good = append(good, in)
	}
	var out []*Series
	for _, g := range Group(good) {
		s, err := Assemble(g, opts)
		if err != nil {
			ReleaseAll(out)
			return nil, skipped, err
		}
		out = append(out, s)
	}
	return out, skipped, nil
}

// Skippable says whether a read error means "not part of any image series"
// (a non-image object, a file that is not DICOM) rather than a broken image.
func Skippable(in Input, err error) (string, bool) {
	if errors.Is(err, ErrNotImage) {
		return strings.TrimPrefix(err.Error(), in.Source+": "), true
	}
	var de *Error
	if !IsDICOM(in.Data) && !(errors.As(err, &de) && de.Tag != "") {
		return "not a DICOM file", true
	}
	return "", false
}

// Group splits instances by study and series UID, in first-seen order.
func Group(instances []*Instance) [][]*Instance {
	groups := map[string]int{}
	var out [][]*Instance
	for _, in := range instances {
		key := in.StudyInstanceUID + "|" + in.SeriesInstanceUID
		i, ok := groups[key]
		if !ok {
			i = len(out)
			groups[key] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], in)
	}
	return out
}

// slice is one frame of one instance, placed in space.
type slice struct {
	in    *Instance
	frame int
	dist  float64 // position along the slice normal
}

// Assemble builds a volume from the instances of one series.
func Assemble(instances []*Instance, opts Options) (*Series, error) {
	if len(instances) == 0 {
		return nil, errors.New("no instances")
	}
	first := instances[0]
	s := &Series{StudyInstanceUID: first.StudyInstanceUID, SeriesInstanceUID: first.SeriesInstanceUID,
		FrameOfReference: first.FrameOfReference, Modality: first.Modality, BodyPart: first.BodyPart,
		Manufacturer: first.Manufacturer, SliceThickness: first.SliceThickness, KVP: first.KVP, TransferSyntax: first.TransferSyntax, Subject: first.Subject}
	seriesErr := func(format string, args ...any) error {
		return fmt.Errorf("series %s: "+format, append([]any{s.SeriesInstanceUID}, args...)...)
	}
	var slices []slice
	seen := map[string]string{}
	for _, in := range instances {
		if prev, dup := seen[in.SOPInstanceUID]; dup && in.SOPInstanceUID != "" {
			return nil, seriesErr("%s and %s are the same instance (SOP Instance UID %s)", prev, in.Source, in.SOPInstanceUID)
		}
		seen[in.SOPInstanceUID] = in.Source
		if in.Rows != first.Rows || in.Columns != first.Columns {
			return nil, seriesErr("mixed image sizes: %s is %dx%d, %s is %dx%d (0028,0010)/(0028,0011)",
				first.Source, first.Columns, first.Rows, in.Source, in.Columns, in.Rows)
		}
		for f := range in.Frames {
			slices = append(slices, slice{in: in, frame: f})
		}
	}
	f0 := slices[0].in.Frames[slices[0].frame]
	geo := volume.Identity()
	if f0.HasSpacing {
		geo.Spacing[0], geo.Spacing[1] = f0.PixelSpacing[1], f0.PixelSpacing[0]
	} else {
		s.Problems = append(s.Problems, "no pixel spacing (0028,0030); assuming 1 mm")
	}
	if len(slices) == 1 && !f0.HasOrient {
		// A projection image (DX, CR) has no patient-space geometry.
		s.Projection = true
		if f0.HasPosition {
			geo.Origin = f0.Position
		}
		if first.SliceThickness > 0 {
			geo.Spacing[2] = first.SliceThickness
		}
	} else {
		if err := placeSlices(s, slices, &geo, opts); err != nil {
			return nil, err
		}
	}
	if err := decodeInto(s, slices, geo, opts); err != nil {
		return nil, err
	}
	return s, nil
}

// placeSlices checks orientation, sorts slices along the normal, and derives
// the slice spacing, origin and direction.
func placeSlices(s *Series, slices []slice, geo *volume.Geometry, opts Options) error {
	seriesErr := func(format string, args ...any) error {
		return fmt.Errorf("series %s: "+format, append([]any{s.SeriesInstanceUID}, args...)...)
	}
	ref := slices[0].in.Frames[slices[0].frame]
	if !ref.HasOrient {
		return seriesErr("%s: (0020,0037) Image Orientation (Patient): missing", slices[0].in.Source)
	}
	row := [3]float64{ref.Orientation[0], ref.Orientation[1], ref.Orientation[2]}
	col := [3]float64{ref.Orientation[3], ref.Orientation[4], ref.Orientation[5]}
	if math.Abs(norm(row)-1) > 1e-3 || math.Abs(norm(col)-1) > 1e-3 || math.Abs(dot(row, col)) > 1e-3 {
		return seriesErr("%s: (0020,0037) Image Orientation (Patient): %v is not two orthogonal unit vectors", slices[0].in.Source, ref.Orientation)
	}
	normal := cross(row, col)
	for i := range slices {
		f := slices[i].in.Frames[slices[i].frame]
		src := sliceName(slices[i])
		if !f.HasOrient {
			return seriesErr("%s: (0020,0037) Image Orientation (Patient): missing", src)
		}
		for k := 0; k < 6; k++ {
			if math.Abs(f.Orientation[k]-ref.Orientation[k]) > 1e-4 {
				return seriesErr("mixed orientations: %s has %v, %s has %v (0020,0037)", sliceName(slices[0]), ref.Orientation, src, f.Orientation)
			}
		}
		if !f.HasPosition {
			return seriesErr("%s: (0020,0032) Image Position (Patient): missing", src)
		}
		if f.HasSpacing && ref.HasSpacing && (math.Abs(f.PixelSpacing[0]-ref.PixelSpacing[0]) > 1e-4 || math.Abs(f.PixelSpacing[1]-ref.PixelSpacing[1]) > 1e-4) {
			return seriesErr("mixed pixel spacing: %s has %v, %s has %v (0028,0030)", sliceName(slices[0]), ref.PixelSpacing, src, f.PixelSpacing)
		}
		slices[i].dist = dot(f.Position, normal)
	}
	sort.SliceStable(slices, func(a, b int) bool { return slices[a].dist < slices[b].dist })
	geo.Origin = slices[0].in.Frames[slices[0].frame].Position
	copy(geo.Direction[0:3], row[:])
	copy(geo.Direction[3:6], col[:])
	copy(geo.Direction[6:9], normal[:])
	if len(slices) == 1 {
		if t := slices[0].in.SliceThickness; t > 0 {
			geo.Spacing[2] = t
		}
		return nil
	}
	gaps := make([]float64, len(slices)-1)
	for i := range gaps {
		gaps[i] = slices[i+1].dist - slices[i].dist
		if gaps[i] < 1e-4 {
			return seriesErr("%s and %s are at the same position %.3f mm along the normal (0020,0032); a series holds one acquisition",
				sliceName(slices[i]), sliceName(slices[i+1]), slices[i].dist)
		}
	}
	sorted := append([]float64(nil), gaps...)
	sort.Float64s(sorted)
	step := sorted[(len(sorted)-1)/2] // the lower median: a missing slice must not set the step
	tol := opts.tolerance()
	var problems []string
	missing := 0
	uneven := false
	for _, g := range gaps {
		if math.Abs(g-step) <= tol {
			continue
		}
		if k := math.Round(g / step); k >= 2 && math.Abs(g-k*step) <= tol {
			missing += int(k) - 1
		} else {
			uneven = true
		}
	}
	if missing > 0 {
		problems = append(problems, fmt.Sprintf("%d missing slices (gaps of a multiple of the %.3f mm spacing)", missing, step))
	}
	if uneven {
		problems = append(problems, fmt.Sprintf("uneven slice spacing: gaps from %.3f to %.3f mm around %.3f mm", sorted[0], sorted[len(sorted)-1], step))
	}
	// Slices must stack along the normal; a gantry-tilted stack is sheared.
	last := slices[len(slices)-1].in.Frames[slices[len(slices)-1].frame].Position
	span := sub(last, geo.Origin)
	if along := dot(span, normal); norm(sub(span, scale(normal, along))) > tol*float64(len(slices)) {
		problems = append(problems, fmt.Sprintf("slices are not stacked along the normal (sheared by %.2f mm over the series: gantry tilt?)", norm(sub(span, scale(normal, along)))))
	}
	if len(problems) > 0 && opts.StrictSpacing {
		return seriesErr("%s", strings.Join(problems, "; "))
	}
	s.Problems = append(s.Problems, problems...)
	geo.Spacing[2] = step
	return nil
}

func sliceName(sl slice) string {
	if sl.in.NumberOfFrames > 1 {
		return fmt.Sprintf("%s frame %d", sl.in.Source, sl.frame+1)
	}
	return sl.in.Source
}

// decodeInto decodes every slice into one float32 volume, in parallel, or
// into int16 stored values when Options.Stored asks and the series allows.
func decodeInto(s *Series, slices []slice, geo volume.Geometry, opts Options) error {
	first := slices[0].in
	rows, cols := first.Rows, first.Columns
	n := rows * cols
	if opts.Stored != nil {
		if rs, ok := storedInt16(slices); ok {
			return decodeStored(s, slices, geo, opts, rs)
		}
	}
	var vox []float32
	if opts.Voxels != nil {
		vox, s.release = opts.Voxels(n * len(slices))
	} else {
		vox = make([]float32, n*len(slices))
	}
	errs := make([]error, len(slices))
	par.Each(len(slices), func(i int) {
		errs[i] = slices[i].in.DecodeFrame(slices[i].frame, vox[i*n:(i+1)*n])
	})
	for _, err := range errs {
		if err != nil {
			s.Release()
			return err
		}
	}
	s.setVolume(slices, geo, tensor.Float32, float32Bytes(vox), nil)
	return nil
}

// setVolume records the slices' sources and the decoded volume.
func (s *Series) setVolume(slices []slice, geo volume.Geometry, dt tensor.DType, data []byte, rs *volume.Rescale) {
	s.Slices = make([]SliceRef, len(slices))
	for i, sl := range slices {
		s.Slices[i] = SliceRef{SOPInstanceUID: sl.in.SOPInstanceUID, SOPClassUID: sl.in.SOPClassUID, Frame: sl.frame + 1}
	}
	first := slices[0].in
	dims := []int64{int64(len(slices)), int64(first.Rows), int64(first.Columns)}
	s.Volume = &volume.Volume{
		Dims:     [3]int64(dims),
		Geometry: geo,
		Voxels:   tensor.Tensor{Name: "volume", DType: dt, Shape: dims, Data: data},
		Rescale:  rs,
		Modality: s.Modality,
		BodyPart: s.BodyPart,
	}
}

// storedInt16 says whether every slice's stored values fit int16 as they
// are (native 16-bit little-endian data, signed, or unsigned with at most
// 15 bits stored; MONOCHROME2) with one rescale, and returns it.
func storedInt16(slices []slice) (*volume.Rescale, bool) {
	var rs *volume.Rescale
	for _, sl := range slices {
		in := sl.in
		if in.native == nil || in.BitsAllocated != 16 || in.bigEndian || in.Photometric == "MONOCHROME1" ||
			in.SamplesPerPixel > 1 || (in.PixelRepresentation == 1) != (in.BitsStored == 16) || in.BitsStored > 16 ||
			len(in.native) < (sl.frame+1)*2*in.Pixels() {
			return nil, false
		}
		f := in.Frames[sl.frame]
		r := &volume.Rescale{Slope: float32(f.Slope), Intercept: float32(f.Intercept)}
		if rs == nil {
			rs = r
		} else if *rs != *r {
			return nil, false
		}
	}
	return rs, rs != nil
}

// decodeStored copies the slices' stored values into one int16 volume.
// Unsigned values of at most 15 bits are masked to their bits (the rest of
// the word is not pixel data) and fit int16 unchanged.
func decodeStored(s *Series, slices []slice, geo volume.Geometry, opts Options, rs *volume.Rescale) error {
	n := slices[0].in.Pixels()
	vox, release := opts.Stored(n * len(slices))
	s.release = release
	par.Each(len(slices), func(i int) {
		in, k := slices[i].in, slices[i].frame
		src := unsafe.Slice((*int16)(unsafe.Pointer(unsafe.SliceData(in.native[k*2*n:]))), n)
		dst := vox[i*n : (i+1)*n]
		if in.PixelRepresentation == 1 {
			copy(dst, src)
			return
		}
		mask := int16(1)<<in.BitsStored - 1
		for j, v := range src {
			dst[j] = v & mask
		}
	})
	s.setVolume(slices, geo, tensor.Int16, unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(vox))), 2*len(vox)), rs)
	return nil
}

func dot(a, b [3]float64) float64 { return a[0]*b[0] + a[1]*b[1] + a[2]*b[2] }
func norm(a [3]float64) float64   { return math.Sqrt(dot(a, a)) }
func sub(a, b [3]float64) [3]float64 {
	return [3]float64{a[0] - b[0], a[1] - b[1], a[2] - b[2]}
}
func scale(a [3]float64, k float64) [3]float64 { return [3]float64{a[0] * k, a[1] * k, a[2] * k} }
func cross(a, b [3]float64) [3]float64 {
	return [3]float64{a[1]*b[2] - a[2]*b[1], a[2]*b[0] - a[0]*b[2], a[0]*b[1] - a[1]*b[0]}
}
