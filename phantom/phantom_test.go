package phantom

import (
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/dicom"
	"github.com/voxserve/voxserve/dicom/dicomwrite"
)

func yes() *bool { b := true; return &b }
func no() *bool  { b := false; return &b }

// readBack runs the case's DICOM through voxserve's own reader.
func readBack(t *testing.T, c *Case) *dicom.Series {
	t.Helper()
	var in []dicom.Input
	for k := 0; k < c.Series.Slices; k++ {
		b, err := dicomwrite.Encode(c.Series.Slice(k))
		require.NoError(t, err)
		in = append(in, dicom.Input{Source: fmt.Sprintf("IM%04d.dcm", k), Data: b})
	}
	series, skipped, err := dicom.ReadStudy(in, dicom.Options{StrictSpacing: true})
	require.NoError(t, err)
	require.Empty(t, skipped)
	require.Len(t, series, 1)
	return series[0]
}

func TestHeadCTGroundTruth(t *testing.T) {
	for seed := uint64(1); seed <= 5; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			// Thin (0.625 mm) and thick (5 mm) slices in turn.
			c, err := Generate(HeadCT, Options{Seed: seed, Positive: yes(), Matrix: 96, SliceThickness: []float64{0.625, 5, 1.25, 2.5, 5}[seed-1]})
			require.NoError(t, err)
			tr := c.Truth
			assert.True(t, tr.Positive)
			assert.NotEmpty(t, tr.Lesions)
			vox := tr.Spacing[0] * tr.Spacing[1] * tr.Spacing[2] / 1000
			n := 0
			for _, l := range c.Labels {
				if l == labelHemorrhage {
					n++
				}
			}
			truthML := tr.Measurements[0].Value
			require.Positive(t, truthML)
			// The voxelized mask matches the integrated volume within
			// voxelization error (thin crescents and sulci at 5 mm slices
			// are the worst case).
			assert.InEpsilon(t, truthML, float64(n)*vox, 0.35, "lesions %v, thickness %.3g", tr.Lesions, tr.SliceThickness)

			s := readBack(t, c)
			g := s.Volume.Geometry
			assert.Equal(t, [3]int64{int64(tr.Dims[0]), int64(tr.Dims[1]), int64(tr.Dims[2])}, s.Volume.Dims)
			for a := 0; a < 3; a++ {
				assert.InDelta(t, tr.Spacing[a], g.Spacing[a], 1e-3)
				assert.InDelta(t, tr.Origin[a], g.Origin[a], 1e-3)
			}
			for a := 0; a < 9; a++ {
				assert.InDelta(t, tr.Direction[a], g.Direction[a], 1e-6)
			}
			assert.Equal(t, "CT", s.Modality)
			assert.Equal(t, "HEAD", s.BodyPart)
			// HU ranges: air, brain, bone, blood.
			v, err := s.Volume.Float32()
			require.NoError(t, err)
			lo, hi := math.Inf(1), math.Inf(-1)
			var blood, nb float64
			for i, x := range v {
				lo, hi = math.Min(lo, float64(x)), math.Max(hi, float64(x))
				if c.Labels[i] == labelHemorrhage {
					blood += float64(x)
					nb++
				}
			}
			assert.Less(t, lo, -950.0)
			assert.Greater(t, hi, 1000.0)
			assert.InDelta(t, 68, blood/nb, 25, "mean HU of the blood")
		})
	}
}

func TestHeadCTNegativeAndDeterministic(t *testing.T) {
	a, err := Generate(HeadCT, Options{Seed: 42, Positive: no(), Matrix: 96, SliceThickness: 5})
	require.NoError(t, err)
	assert.False(t, a.Truth.Positive)
	assert.Zero(t, a.Truth.Measurements[0].Value)
	for _, l := range a.Labels {
		require.Zero(t, l)
	}
	b, err := Generate(HeadCT, Options{Seed: 42, Positive: no(), Matrix: 96, SliceThickness: 5})
	require.NoError(t, err)
	ea, err := dicomwrite.Encode(a.Series.Slice(3))
	require.NoError(t, err)
	eb, err := dicomwrite.Encode(b.Series.Slice(3))
	require.NoError(t, err)
	assert.Equal(t, ea, eb, "same seed, same bytes")
	assert.Equal(t, a.Truth, b.Truth)
	c, err := Generate(HeadCT, Options{Seed: 43, Positive: no(), Matrix: 96, SliceThickness: 5})
	require.NoError(t, err)
	assert.NotEqual(t, a.Truth.SeriesUID, c.Truth.SeriesUID)
}

func TestChestXRGroundTruth(t *testing.T) {
	mono1 := 0
	for seed := uint64(1); seed <= 8; seed++ {
		c, err := Generate(ChestXR, Options{Seed: seed, Positive: yes(), Matrix: 256})
		require.NoError(t, err)
		tr := c.Truth
		require.Len(t, tr.Lesions, 1)
		side := labelRightLung
		if tr.Lesions[0] == "left pneumothorax" {
			side = labelLeftLung
		}
		var ptx, hemi float64
		for _, l := range c.Labels {
			switch int(l) {
			case labelPneumothorax:
				ptx++
				hemi++
			case side:
				hemi++
			}
		}
		assert.InDelta(t, tr.Measurements[0].Value, ptx/hemi, 0.02, "seed %d", seed)
		assert.Positive(t, tr.Measurements[0].Value)

		s := readBack(t, c)
		assert.Equal(t, "DX", s.Modality)
		assert.Equal(t, "CHEST", s.BodyPart)
		assert.Equal(t, [3]int64{1, 256, 256}, s.Volume.Dims)
		assert.InDelta(t, tr.Spacing[0], s.Volume.Geometry.Spacing[0], 1e-6)
		// Whatever the photometric interpretation, voxserve reads lungs darker
		// than the mediastinum.
		v, _ := s.Volume.Float32()
		var lung, soft, nl, ns float64
		for i, x := range v {
			switch c.Labels[i] {
			case labelRightLung, labelLeftLung:
				lung += float64(x)
				nl++
			}
			if i%256 == 128 { // the midline column: mediastinum and spine
				soft += float64(x)
				ns++
			}
		}
		assert.Less(t, lung/nl, soft/ns)
		if c.Series.Photometric == "MONOCHROME1" {
			mono1++
		}
	}
	for seed := uint64(9); seed <= 40 && mono1 == 0; seed++ {
		c, err := Generate(ChestXR, Options{Seed: seed, Matrix: 32})
		require.NoError(t, err)
		if c.Series.Photometric == "MONOCHROME1" {
			mono1++
		}
	}
	assert.Positive(t, mono1, "some radiographs should be MONOCHROME1")
	neg, err := Generate(ChestXR, Options{Seed: 3, Positive: no(), Matrix: 128})
	require.NoError(t, err)
	assert.Zero(t, neg.Truth.Measurements[0].Value)
}

func TestAbdomenCTGroundTruth(t *testing.T) {
	for seed := uint64(1); seed <= 2; seed++ {
		c, err := Generate(AbdomenCT, Options{Seed: seed, Matrix: 160, SliceThickness: 2})
		require.NoError(t, err)
		tr := c.Truth
		m := map[string]float64{}
		for _, x := range tr.Measurements {
			m[x.Label+"/"+x.Name] = x.Value
		}
		plane := tr.Dims[1] * tr.Dims[2]
		pixA := tr.Spacing[0] * tr.Spacing[1] / 100 // cm2
		voxML := pixA * tr.Spacing[2] / 10
		v := readBack(t, c)
		hu, _ := v.Volume.Float32()
		for lab, name := range map[uint8]string{labelLeftPsoas: "left psoas", labelRightPsoas: "right psoas"} {
			n, slices, best, sum := 0, 0, 0, 0.0
			for k := 0; k < tr.Dims[0]; k++ {
				in := 0
				for i := k * plane; i < (k+1)*plane; i++ {
					if c.Labels[i] == lab {
						in++
						sum += float64(hu[i])
					}
				}
				n += in
				best = max(best, in)
				if in > 0 {
					slices++
				}
			}
			assert.InEpsilon(t, m[name+"/volume"], float64(n)*voxML, 0.08, "%s volume, seed %d", name, seed)
			assert.InDelta(t, m[name+"/craniocaudal length"], float64(slices)*tr.Spacing[2]/10, 0.6, "%s length", name)
			assert.InEpsilon(t, m[name+"/maximal cross-sectional area"], float64(best)*pixA, 0.15, "%s area", name)
			assert.InDelta(t, m[name+"/mean attenuation"], sum/float64(n), 8, "%s mean HU", name)
		}
		assert.Equal(t, "ABDOMEN", v.BodyPart)
	}
}
