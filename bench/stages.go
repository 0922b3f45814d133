package bench

import "sync"

// StageTimes collects the server's per-request step times (voxserve's
// Timings.stages) over each measured window, for a step's mean per step:
// where the time of a request goes under load. Calls Add what their
// responses say; Sweep and SweepRates start and stop it around each
// measured window, so that warm-up requests are left out. Its methods are
// safe for concurrent use, and do nothing on a nil StageTimes.
type StageTimes struct {
	mu    sync.Mutex
	on    bool
	order []string
	sum   map[string]float64
	n     map[string]int
}

// StageMean is one step's mean time over a window's successful requests.
type StageMean struct {
	Name   string  `json:"name"`
	MeanMs float64 `json:"mean_ms"`
}

// Add records one request's time in step name, while a window is measured.
func (st *StageTimes) Add(name string, ms float64) {
	if st == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.on {
		return
	}
	if _, seen := st.n[name]; !seen {
		st.order = append(st.order, name)
	}
	st.sum[name] += ms
	st.n[name]++
}

func (st *StageTimes) start() {
	if st == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.on, st.order, st.sum, st.n = true, nil, map[string]float64{}, map[string]int{}
}

// stop ends the window and returns the means, in the order steps first
// appeared (the order they run in).
func (st *StageTimes) stop() []StageMean {
	if st == nil {
		return nil
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.on = false
	var out []StageMean
	for _, name := range st.order {
		out = append(out, StageMean{Name: name, MeanMs: st.sum[name] / float64(st.n[name])})
	}
	return out
}
