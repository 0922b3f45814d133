package evaluation

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestAUC(t *testing.T) {
	assert.Equal(t, 1.0, AUC([]float64{0.1, 0.2, 0.8, 0.9}, []bool{false, false, true, true}))
	assert.Equal(t, 0.0, AUC([]float64{0.9, 0.8, 0.2, 0.1}, []bool{false, false, true, true}))
	assert.Equal(t, 0.5, AUC([]float64{0.5, 0.5, 0.5, 0.5}, []bool{false, true, false, true}))
	// 3 positives, 2 negatives; pairs won: (0.8>0.3,0.8>0.6),(0.4>0.3),(0.9>both) = 5 of 6.
	assert.InDelta(t, 5.0/6, AUC([]float64{0.8, 0.4, 0.9, 0.3, 0.6}, []bool{true, true, true, false, false}), 1e-12)
	assert.True(t, math.IsNaN(AUC([]float64{1, 2}, []bool{true, true})))
	lo, hi := BootstrapAUC([]float64{0.8, 0.4, 0.9, 0.3, 0.6, 0.7, 0.2}, []bool{true, true, true, false, false, true, false}, 500, 1)
	assert.LessOrEqual(t, lo, hi)
	assert.LessOrEqual(t, hi, 1.0)
}

func TestDiceConfusionErrors(t *testing.T) {
	assert.InDelta(t, 2.0/3, Dice([]uint8{1, 1, 0, 0}, 1, []uint8{1, 0, 0, 0}, 1), 1e-12)
	assert.Equal(t, 1.0, Dice([]uint8{0, 0}, 1, []uint8{0, 0}, 1))
	var c Confusion
	c.Add(true, true)
	c.Add(true, false)
	c.Add(false, false)
	c.Add(false, true)
	c.Add(true, true)
	assert.Equal(t, Confusion{TP: 2, FP: 1, TN: 1, FN: 1}, c)
	assert.InDelta(t, 2.0/3, c.Sensitivity(), 1e-12)
	e := Summarise([]float64{11, 18, 0}, []float64{10, 20, 0})
	assert.InDelta(t, 1, e.MeanAbs, 1e-12)
	assert.InDelta(t, 0.1, e.MeanRel, 1e-12)
	assert.InDelta(t, 0.1, e.MedianRel, 1e-12)
}
