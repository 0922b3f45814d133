// Package bench drives load against a voxserve server and summarises it:
// a closed-loop concurrency sweep with warm-up, latency percentiles and
// throughput per step.
package bench

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Call makes one request; it returns the server-side queue and compute
// times when the response reports them.
type Call func(ctx context.Context) (queue, compute time.Duration, err error)

// Step is one concurrency level's result.
type Step struct {
	Concurrency int `json:"concurrency"`
	// RateRPS is the offered rate of a fixed-rate step (0: closed loop).
	RateRPS       float64 `json:"rate_rps,omitempty"`
	Requests      int     `json:"requests"`
	Errors        int     `json:"errors"`
	DurationS     float64 `json:"duration_s"`
	ThroughputRPS float64 `json:"throughput_rps"`
	P50Ms         float64 `json:"p50_ms"`
	P90Ms         float64 `json:"p90_ms"`
	P95Ms         float64 `json:"p95_ms"`
	P99Ms         float64 `json:"p99_ms"`
	MeanQueueMs   float64 `json:"mean_queue_ms"`
	MeanComputeMs float64 `json:"mean_compute_ms"`
	// OverheadP50Ms is the median of latency minus the server's model
	// time: the round trip, serialization and scheduling around the model
	// (0 when the server reports no model time).
	OverheadP50Ms float64 `json:"overhead_p50_ms"`
	// MeanBatchSize is the average batch the server formed during the step
	// (from its statistics; 0 when not known).
	MeanBatchSize float64 `json:"mean_batch_size,omitempty"`
	FirstError    string  `json:"first_error,omitempty"`
	// Probe is the latency of the probe requests sent alongside the load
	// (e.g. STAT requests under routine load), when the sweep has probes.
	Probe *Step `json:"probe,omitempty"`
	// Stages are the server's mean time per step of a request (Config.Stages).
	Stages []StageMean `json:"stages,omitempty"`
}

// Config is one sweep.
type Config struct {
	Concurrency []int
	Duration    time.Duration
	Warmup      time.Duration
	// MaxRequests bounds each step (0: none) so that a run always ends.
	MaxRequests int
	// Progress, if set, is told each step as it starts.
	Progress func(step, of, concurrency int)
	// Live, if set, follows the sweep request by request (a progress bar).
	Live *Live
	// Batches, if set, returns the server's cumulative inference and
	// execution counts, read before and after each step for its mean batch.
	Batches func(ctx context.Context) (inferences, executions int64, err error)
	// Times, if set, returns the server's cumulative request count and
	// queue and compute time (KServe ModelStatistics). A step whose calls
	// report no server times (KServe responses carry none) takes its mean
	// queue and compute from the counts before it and after it, and its
	// overhead is the median latency minus both.
	Times func(ctx context.Context) (ServerTimes, error)
	// Probe, if set, is sent ProbeRate times a second, open loop, during
	// each measured window, and reported apart: how a request of another
	// kind (a STAT study) fares under the load.
	Probe     Call
	ProbeRate float64
	// Stages, if set, collects the per-step times the calls report, for
	// each step's Stages.
	Stages *StageTimes
}

// ServerTimes are a server's cumulative per-request statistics.
type ServerTimes struct {
	Requests       int64
	Queue, Compute time.Duration
}

func serverTimes(ctx context.Context, cfg Config) *ServerTimes {
	if cfg.Times == nil {
		return nil
	}
	t, err := cfg.Times(ctx)
	if err != nil {
		return nil
	}
	return &t
}

// splitFromServer fills a step's queue and compute split and overhead from
// the server's statistics over the step, when its calls reported none.
func splitFromServer(ctx context.Context, cfg Config, s *Step, before *ServerTimes) {
	if before == nil || s.MeanComputeMs > 0 || s.MeanQueueMs > 0 {
		return
	}
	after := serverTimes(ctx, cfg)
	if after == nil || after.Requests <= before.Requests {
		return
	}
	n := float64(after.Requests - before.Requests)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / n }
	s.MeanQueueMs, s.MeanComputeMs = ms(after.Queue-before.Queue), ms(after.Compute-before.Compute)
	s.OverheadP50Ms = s.P50Ms - s.MeanQueueMs - s.MeanComputeMs
}

// SweepRates runs each offered rate in turn, open loop: requests go out on
// a fixed schedule whatever the answers' latency, so that queueing shows
// (a closed loop slows its own sending down when the server does).
func SweepRates(ctx context.Context, cfg Config, rates []float64, call Call) ([]Step, error) {
	var steps []Step
	for i, r := range rates {
		if r <= 0 {
			return nil, fmt.Errorf("rate %g must be > 0", r)
		}
		if cfg.Progress != nil {
			cfg.Progress(i+1, len(rates), int(r))
		}
		counted := cfg.Live.count(call)
		if cfg.Warmup > 0 {
			cfg.Live.begin(i+1, len(rates), int(r), true, cfg.Warmup)
			openLoop(ctx, r, cfg.Warmup, counted)
		}
		before, times := batchCounts(ctx, cfg), serverTimes(ctx, cfg)
		cfg.Live.begin(i+1, len(rates), int(r), false, cfg.Duration)
		cfg.Stages.start()
		s := openLoop(ctx, r, cfg.Duration, counted)
		s.Stages = cfg.Stages.stop()
		s.RateRPS = r
		s.MeanBatchSize = meanBatch(ctx, cfg, before)
		splitFromServer(ctx, cfg, &s, times)
		steps = append(steps, s)
		if err := ctx.Err(); err != nil {
			return steps, err
		}
	}
	return steps, nil
}

// Sweep runs each concurrency level in turn: a warm-up whose results are
// dropped, then the measured window.
func Sweep(ctx context.Context, cfg Config, call Call) ([]Step, error) {
	var steps []Step
	for i, c := range cfg.Concurrency {
		if c < 0 || (c == 0 && cfg.Probe == nil) {
			return nil, fmt.Errorf("concurrency %d must be >= 1 (0 only with probes: the unloaded baseline)", c)
		}
		if cfg.Progress != nil {
			cfg.Progress(i+1, len(cfg.Concurrency), c)
		}
		counted := cfg.Live.count(call)
		if cfg.Warmup > 0 {
			cfg.Live.begin(i+1, len(cfg.Concurrency), c, true, cfg.Warmup)
			closedLoop(ctx, c, cfg.Warmup, 0, counted)
		}
		var probes chan Step
		if cfg.Probe != nil && cfg.ProbeRate > 0 {
			probes = make(chan Step, 1)
			go func() { probes <- openLoop(ctx, cfg.ProbeRate, cfg.Duration, cfg.Probe) }()
		}
		before, times := batchCounts(ctx, cfg), serverTimes(ctx, cfg)
		cfg.Live.begin(i+1, len(cfg.Concurrency), c, false, cfg.Duration)
		cfg.Stages.start()
		s := closedLoop(ctx, c, cfg.Duration, cfg.MaxRequests, counted)
		s.Stages = cfg.Stages.stop()
		s.MeanBatchSize = meanBatch(ctx, cfg, before)
		splitFromServer(ctx, cfg, &s, times)
		if probes != nil {
			p := <-probes
			s.Probe = &p
		}
		steps = append(steps, s)
		if err := ctx.Err(); err != nil {
			return steps, err
		}
	}
	return steps, nil
}

type sample struct {
	lat, queue, compute time.Duration
	err                 error
}

// closedLoop runs conc workers that each send a request as soon as the
// previous one returns. Workers stop starting requests when the window ends;
// requests already sent finish and count, so no sample is cut off.
func closedLoop(ctx context.Context, conc int, d time.Duration, maxReq int, call Call) Step {
	var (
		mu      sync.Mutex
		samples []sample
		wg      sync.WaitGroup
		full    atomic.Bool
	)
	start := time.Now()
	end := start.Add(d)
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && !full.Load() && time.Now().Before(end) {
				t0 := time.Now()
				q, c, err := call(ctx)
				mu.Lock()
				samples = append(samples, sample{time.Since(t0), q, c, err})
				if maxReq > 0 && len(samples) >= maxReq {
					full.Store(true)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return summarise(conc, time.Since(start), samples)
}

func batchCounts(ctx context.Context, cfg Config) [2]int64 {
	if cfg.Batches == nil {
		return [2]int64{-1, -1}
	}
	i, e, err := cfg.Batches(ctx)
	if err != nil {
		return [2]int64{-1, -1}
	}
	return [2]int64{i, e}
}

// meanBatch is the step's inferences over its executions, from the counts
// before it and now; 0 when unknown.
func meanBatch(ctx context.Context, cfg Config, before [2]int64) float64 {
	after := batchCounts(ctx, cfg)
	if before[0] < 0 || after[0] < 0 || after[1] <= before[1] {
		return 0
	}
	return float64(after[0]-before[0]) / float64(after[1]-before[1])
}

// openLoop sends call at a fixed rate for d, each request on its own, so
// that slow answers do not slow the sending.
func openLoop(ctx context.Context, rate float64, d time.Duration, call Call) Step {
	var (
		mu      sync.Mutex
		samples []sample
		wg      sync.WaitGroup
	)
	start := time.Now()
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	for time.Since(start) < d && ctx.Err() == nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			q, c, err := call(ctx)
			mu.Lock()
			samples = append(samples, sample{time.Since(t0), q, c, err})
			mu.Unlock()
		}()
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
	wg.Wait()
	return summarise(0, time.Since(start), samples)
}

func summarise(conc int, elapsed time.Duration, samples []sample) Step {
	s := Step{Concurrency: conc, DurationS: elapsed.Seconds()}
	var lats, over []float64
	var q, c float64
	for _, x := range samples {
		s.Requests++
		if x.err != nil {
			s.Errors++
			if s.FirstError == "" {
				s.FirstError = x.err.Error()
			}
			continue
		}
		lats = append(lats, float64(x.lat.Microseconds())/1000)
		q += float64(x.queue.Microseconds()) / 1000
		c += float64(x.compute.Microseconds()) / 1000
		if x.compute > 0 {
			over = append(over, float64((x.lat-x.compute).Microseconds())/1000)
		}
	}
	if n := len(lats); n > 0 {
		sort.Float64s(lats)
		s.ThroughputRPS = float64(n) / elapsed.Seconds()
		s.P50Ms, s.P90Ms, s.P95Ms, s.P99Ms = Percentile(lats, 50), Percentile(lats, 90), Percentile(lats, 95), Percentile(lats, 99)
		s.MeanQueueMs, s.MeanComputeMs = q/float64(n), c/float64(n)
	}
	if len(over) > 0 {
		sort.Float64s(over)
		s.OverheadP50Ms = Percentile(over, 50)
	}
	return s
}

// Percentile of sorted values, nearest-rank.
func Percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Report is what a run writes: the steps with the context to reproduce them.
type Report struct {
	Command   string            `json:"command"`
	Target    string            `json:"target"`
	Model     string            `json:"model"`
	StartedAt time.Time         `json:"started_at"`
	Machine   map[string]string `json:"machine"`
	Steps     []Step            `json:"steps"`
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteCSV writes one row per step.
func (r *Report) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"concurrency", "rate_rps", "requests", "errors", "duration_s", "throughput_rps", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_queue_ms", "mean_compute_ms",
		"overhead_p50_ms", "mean_batch_size",
		"probe_requests", "probe_p50_ms", "probe_p99_ms"})
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) }
	for _, s := range r.Steps {
		row := []string{strconv.Itoa(s.Concurrency), f(s.RateRPS), strconv.Itoa(s.Requests), strconv.Itoa(s.Errors), f(s.DurationS),
			f(s.ThroughputRPS), f(s.P50Ms), f(s.P90Ms), f(s.P95Ms), f(s.P99Ms), f(s.MeanQueueMs), f(s.MeanComputeMs), f(s.OverheadP50Ms), f(s.MeanBatchSize), "", "", ""}
		if p := s.Probe; p != nil {
			row[14], row[15], row[16] = strconv.Itoa(p.Requests), f(p.P50Ms), f(p.P99Ms)
		}
		_ = cw.Write(row)
	}
	cw.Flush()
	return cw.Error()
}
