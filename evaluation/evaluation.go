// Package evaluation scores a model's results against ground truth: ROC
// AUC with a bootstrap interval, confusion matrices, Dice overlap and
// measurement errors. voxctl eval feeds it the server's answers.
package evaluation

import (
	"math"
	"math/rand/v2"
	"sort"
)

// AUC is the area under the ROC curve of scores for binary labels: the
// probability that a positive outscores a negative (ties count half).
// NaN when either class is empty.
func AUC(scores []float64, positive []bool) float64 {
	type pt struct {
		s   float64
		pos bool
	}
	pts := make([]pt, len(scores))
	var np, nn float64
	for i, s := range scores {
		pts[i] = pt{s, positive[i]}
		if positive[i] {
			np++
		} else {
			nn++
		}
	}
	if np == 0 || nn == 0 {
		return math.NaN()
	}
	sort.Slice(pts, func(a, b int) bool { return pts[a].s < pts[b].s })
	// Mann-Whitney U from average ranks.
	var rankSum float64
	for i := 0; i < len(pts); {
		j := i
		for j < len(pts) && pts[j].s == pts[i].s {
			j++
		}
		avg := float64(i+j+1) / 2 // ranks i+1..j
		for k := i; k < j; k++ {
			if pts[k].pos {
				rankSum += avg
			}
		}
		i = j
	}
	return (rankSum - np*(np+1)/2) / (np * nn)
}

// BootstrapAUC returns the 2.5th and 97.5th percentiles of the AUC over n
// resamples of the cases (with replacement), from a fixed seed.
func BootstrapAUC(scores []float64, positive []bool, n int, seed uint64) (lo, hi float64) {
	r := rand.New(rand.NewPCG(seed, 1))
	var aucs []float64
	s := make([]float64, len(scores))
	p := make([]bool, len(scores))
	for b := 0; b < n; b++ {
		for i := range s {
			j := r.IntN(len(scores))
			s[i], p[i] = scores[j], positive[j]
		}
		if a := AUC(s, p); !math.IsNaN(a) {
			aucs = append(aucs, a)
		}
	}
	if len(aucs) == 0 {
		return math.NaN(), math.NaN()
	}
	sort.Float64s(aucs)
	q := func(f float64) float64 { return aucs[min(len(aucs)-1, int(f*float64(len(aucs))))] }
	return q(0.025), q(0.975)
}

// Confusion counts decisions against truth.
type Confusion struct {
	TP, FP, TN, FN int
}

// Add records one case.
func (c *Confusion) Add(predicted, actual bool) {
	switch {
	case predicted && actual:
		c.TP++
	case predicted:
		c.FP++
	case actual:
		c.FN++
	default:
		c.TN++
	}
}

// Sensitivity is TP / (TP + FN).
func (c Confusion) Sensitivity() float64 { return ratio(c.TP, c.TP+c.FN) }

// Specificity is TN / (TN + FP).
func (c Confusion) Specificity() float64 { return ratio(c.TN, c.TN+c.FP) }

func ratio(a, b int) float64 {
	if b == 0 {
		return math.NaN()
	}
	return float64(a) / float64(b)
}

// Dice is 2|A∩B| / (|A| + |B|) for voxels equal to a in pred and b in
// truth; 1 when both are empty.
func Dice(pred []uint8, a uint8, truth []uint8, b uint8) float64 {
	var inter, np, nt int
	for i := range pred {
		p, t := pred[i] == a, truth[i] == b
		if p {
			np++
		}
		if t {
			nt++
		}
		if p && t {
			inter++
		}
	}
	if np+nt == 0 {
		return 1
	}
	return 2 * float64(inter) / float64(np+nt)
}

// Errors summarises predicted against true values.
type Errors struct {
	N             int     `json:"n"`
	MeanAbs       float64 `json:"mean_abs_error"`
	MeanRel       float64 `json:"mean_rel_error"`
	MedianRel     float64 `json:"median_rel_error"`
	MeanTrue      float64 `json:"mean_true"`
	MeanPredicted float64 `json:"mean_predicted"`
}

// Summarise computes errors over pairs; relative errors skip true zeros.
func Summarise(pred, truth []float64) Errors {
	e := Errors{N: len(pred)}
	if len(pred) == 0 {
		return e
	}
	var rels []float64
	for i := range pred {
		d := math.Abs(pred[i] - truth[i])
		e.MeanAbs += d
		e.MeanTrue += truth[i]
		e.MeanPredicted += pred[i]
		if truth[i] != 0 {
			rels = append(rels, d/math.Abs(truth[i]))
		}
	}
	n := float64(len(pred))
	e.MeanAbs /= n
	e.MeanTrue /= n
	e.MeanPredicted /= n
	if len(rels) > 0 {
		sort.Float64s(rels)
		for _, r := range rels {
			e.MeanRel += r
		}
		e.MeanRel /= float64(len(rels))
		e.MedianRel = rels[len(rels)/2]
		if len(rels)%2 == 0 {
			e.MedianRel = (rels[len(rels)/2-1] + rels[len(rels)/2]) / 2
		}
	}
	return e
}
