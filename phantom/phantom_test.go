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
	for seed := uint64(1); seed <= 6; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			c, err := Generate(HeadCT, Options{Seed: seed, Positive: yes(), Matrix: 128})
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
