package bench

import (
	"bytes"
	"context"
	"errors"
	"image/png"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPercentile(t *testing.T) {
	v := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	assert.Equal(t, 5.0, Percentile(v, 50))
	assert.Equal(t, 9.0, Percentile(v, 90))
	assert.Equal(t, 10.0, Percentile(v, 99))
	assert.Equal(t, 1.0, Percentile(v, 0))
	assert.True(t, Percentile(nil, 50) != Percentile(nil, 50)) // NaN
}

func TestSweep(t *testing.T) {
	var n atomic.Int64
	call := func(ctx context.Context) (time.Duration, time.Duration, error) {
		i := n.Add(1)
		time.Sleep(time.Millisecond)
		if i%10 == 0 {
			return 0, 0, errors.New("boom")
		}
		return 100 * time.Microsecond, 500 * time.Microsecond, nil
	}
	steps, err := Sweep(context.Background(), Config{Concurrency: []int{1, 4}, Duration: 50 * time.Millisecond, Warmup: 5 * time.Millisecond}, call)
	require.NoError(t, err)
	require.Len(t, steps, 2)
	for _, s := range steps {
		assert.Positive(t, s.Requests)
		assert.Positive(t, s.Errors)
		assert.Equal(t, "boom", s.FirstError)
		assert.GreaterOrEqual(t, s.P50Ms, 1.0)
		assert.InDelta(t, 0.5, s.MeanComputeMs, 1e-9)
		assert.LessOrEqual(t, s.P50Ms, s.P99Ms)
	}
	assert.Greater(t, steps[1].ThroughputRPS, steps[0].ThroughputRPS)

	steps, err = Sweep(context.Background(), Config{Concurrency: []int{2}, Duration: time.Minute, MaxRequests: 7}, call)
	require.NoError(t, err)
	assert.LessOrEqual(t, steps[0].Requests, 8)

	_, err = Sweep(context.Background(), Config{Concurrency: []int{0}}, call)
	assert.Error(t, err)

	rep := &Report{Command: "voxbench x", Steps: steps}
	var csv, js bytes.Buffer
	require.NoError(t, rep.WriteCSV(&csv))
	require.NoError(t, rep.WriteJSON(&js))
	assert.Equal(t, 2, strings.Count(csv.String(), "\n"))
	assert.Contains(t, js.String(), `"command": "voxbench x"`)
}

// Probes run open loop beside the load and are reported apart; concurrency
// 0 runs probes alone, the unloaded baseline.
func TestSweepWithProbes(t *testing.T) {
	var probes atomic.Int64
	load := func(ctx context.Context) (time.Duration, time.Duration, error) {
		time.Sleep(time.Millisecond)
		return 0, 0, nil
	}
	probe := func(ctx context.Context) (time.Duration, time.Duration, error) {
		probes.Add(1)
		return 0, 0, nil
	}
	steps, err := Sweep(context.Background(), Config{Concurrency: []int{0, 2}, Duration: 200 * time.Millisecond, Probe: probe, ProbeRate: 50}, load)
	require.NoError(t, err)
	require.Len(t, steps, 2)
	assert.Zero(t, steps[0].Requests)
	for _, s := range steps {
		require.NotNil(t, s.Probe)
		assert.InDelta(t, 10, s.Probe.Requests, 4)
	}
	assert.Positive(t, steps[1].Requests)
	_, err = Sweep(context.Background(), Config{Concurrency: []int{0}, Duration: time.Millisecond}, load)
	assert.Error(t, err, "concurrency 0 needs probes")
}

// Fixed-rate steps send on schedule and record the offered rate.
func TestSweepRates(t *testing.T) {
	var n atomic.Int64
	call := func(ctx context.Context) (time.Duration, time.Duration, error) {
		n.Add(1)
		return 0, 0, nil
	}
	steps, err := SweepRates(context.Background(), Config{Duration: 200 * time.Millisecond}, []float64{50, 100}, call)
	require.NoError(t, err)
	require.Len(t, steps, 2)
	assert.Equal(t, 50.0, steps[0].RateRPS)
	assert.InDelta(t, 10, steps[0].Requests, 4)
	assert.InDelta(t, 20, steps[1].Requests, 6)
	_, err = SweepRates(context.Background(), Config{Duration: time.Millisecond}, []float64{0}, call)
	assert.Error(t, err)
}

func TestWritePNG(t *testing.T) {
	rep := &Report{Model: "m", Target: "t", Steps: []Step{
		{Concurrency: 1, ThroughputRPS: 10, P50Ms: 5, P99Ms: 9},
		{Concurrency: 4, ThroughputRPS: 30, P50Ms: 12, P99Ms: 30},
	}}
	var buf bytes.Buffer
	require.NoError(t, rep.WritePNG(&buf))
	img, err := png.Decode(&buf)
	require.NoError(t, err)
	assert.Equal(t, 800, img.Bounds().Dx())
	assert.Error(t, (&Report{}).WritePNG(&buf), "nothing to plot")
}

func TestLiveProgress(t *testing.T) {
	var l Live
	assert.Empty(t, l.Line("concurrency", 10), "nothing before the first step")
	calls := 0
	call := l.count(func(context.Context) (time.Duration, time.Duration, error) {
		calls++
		if calls%4 == 0 {
			return 0, 0, errors.New("x")
		}
		return 0, 0, nil
	})
	l.begin(2, 3, 8, false, 0)
	for i := 0; i < 8; i++ {
		_, _, _ = call(context.Background())
	}
	line := l.Line("concurrency", 10)
	assert.Contains(t, line, "[2/3] concurrency 8  measure ▕██████████▏")
	assert.Contains(t, line, "8 req")
	assert.Contains(t, line, "2 errors")
	l.begin(3, 3, 16, true, time.Hour)
	assert.Contains(t, l.Line("rate", 4), "[3/3] rate 16  warm-up ▕░░░░▏")
	assert.Contains(t, l.Line("rate", 4), "0 req")

	// A sweep drives it.
	var live Live
	steps, err := Sweep(context.Background(), Config{Concurrency: []int{2}, Duration: 30 * time.Millisecond, Live: &live},
		func(context.Context) (time.Duration, time.Duration, error) {
			time.Sleep(time.Millisecond)
			return 0, 0, nil
		})
	require.NoError(t, err)
	assert.Equal(t, int64(steps[0].Requests), live.done.Load())
}

// Calls that report no server times (KServe) get the step's queue and
// compute split from the server's cumulative statistics, and an overhead.
func TestSweepSplitFromServerStatistics(t *testing.T) {
	var served atomic.Int64
	call := func(ctx context.Context) (time.Duration, time.Duration, error) {
		time.Sleep(2 * time.Millisecond)
		served.Add(1)
		return 0, 0, nil
	}
	times := func(context.Context) (ServerTimes, error) {
		n := served.Load()
		// Each request queued 0.2 ms and computed 1 ms on the server.
		return ServerTimes{Requests: n, Queue: time.Duration(n) * 200 * time.Microsecond, Compute: time.Duration(n) * time.Millisecond}, nil
	}
	steps, err := Sweep(context.Background(), Config{Concurrency: []int{1}, Duration: 40 * time.Millisecond, Times: times}, call)
	require.NoError(t, err)
	s := steps[0]
	assert.InDelta(t, 0.2, s.MeanQueueMs, 1e-9)
	assert.InDelta(t, 1.0, s.MeanComputeMs, 1e-9)
	assert.InDelta(t, s.P50Ms-1.2, s.OverheadP50Ms, 1e-9)

	// Calls that report their own times keep them.
	own := func(ctx context.Context) (time.Duration, time.Duration, error) {
		served.Add(1)
		return 0, 3 * time.Millisecond, nil
	}
	steps, err = Sweep(context.Background(), Config{Concurrency: []int{1}, Duration: 10 * time.Millisecond, Times: times}, own)
	require.NoError(t, err)
	assert.InDelta(t, 3.0, steps[0].MeanComputeMs, 1e-9)
}

// Per-step times are averaged over each measured window only: what comes
// outside a window (warm-up) is left out, and each step starts afresh, in
// the order the steps ran.
func TestSweepStageMeans(t *testing.T) {
	st := &StageTimes{}
	st.Add("decode", 1000) // outside any window: left out
	st.start()
	st.Add("decode", 2)
	st.Add("model", 6)
	st.Add("decode", 4)
	assert.Equal(t, []StageMean{{"decode", 3}, {"model", 6}}, st.stop())
	st.Add("model", 1000)

	var value atomic.Int64
	call := func(ctx context.Context) (time.Duration, time.Duration, error) {
		time.Sleep(time.Millisecond)
		st.Add("model", float64(value.Load()))
		return 0, 0, nil
	}
	cfg := Config{Concurrency: []int{1, 2}, Duration: 20 * time.Millisecond, Stages: st,
		Progress: func(i, _, _ int) { value.Store(int64(2 * i)) }} // no warm-up: windows alone
	steps, err := Sweep(context.Background(), cfg, call)
	require.NoError(t, err)
	assert.Equal(t, []StageMean{{"model", 2}}, steps[0].Stages)
	assert.Equal(t, []StageMean{{"model", 4}}, steps[1].Stages, "the second step starts afresh")
	var js bytes.Buffer
	require.NoError(t, (&Report{Steps: steps}).WriteJSON(&js))
	assert.Contains(t, js.String(), `"name": "model"`)
	var none *StageTimes
	none.Add("x", 1) // a nil collector takes nothing, and does not panic
	assert.Nil(t, none.stop())
}
