package par

import (
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestRangeAndEachCoverEveryItemOnce(t *testing.T) {
	for _, n := range []int{0, 1, 2, 7, 1000, 100003} {
		seen := make([]atomic.Int32, n)
		Range(n, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				seen[i].Add(1)
			}
		})
		RangeGrain(n, 1<<10, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				seen[i].Add(1)
			}
		})
		Each(n, func(i int) { seen[i].Add(1) })
		for i := range seen {
			if !assert.Equal(t, int32(3), seen[i].Load(), "n %d item %d", n, i) {
				break
			}
		}
	}
}
