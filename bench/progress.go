package bench

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// Live follows a sweep as it runs, for a progress display: the step, its
// phase and window, and the requests finished so far. Its methods are safe
// to call from any goroutine.
type Live struct {
	step, of, level atomic.Int64
	warm            atomic.Bool
	start, window   atomic.Int64 // unix ns, ns
	done, errors    atomic.Int64
}

func (l *Live) begin(step, of, level int, warm bool, window time.Duration) {
	if l == nil {
		return
	}
	l.step.Store(int64(step))
	l.of.Store(int64(of))
	l.level.Store(int64(level))
	l.warm.Store(warm)
	l.done.Store(0)
	l.errors.Store(0)
	l.window.Store(int64(window))
	l.start.Store(time.Now().UnixNano())
}

// count wraps call so that its answers are counted.
func (l *Live) count(call Call) Call {
	if l == nil {
		return call
	}
	return func(ctx context.Context) (time.Duration, time.Duration, error) {
		q, c, err := call(ctx)
		l.done.Add(1)
		if err != nil {
			l.errors.Add(1)
		}
		return q, c, err
	}
}

// Line renders the state as one terminal line with a bar width cells wide,
// e.g. "[2/6] concurrency 4  measure ▕████░░░░▏  4.1/10s  412 req  100.4/s  0 errors".
// unit names the level ("concurrency" or "rate").
func (l *Live) Line(unit string, width int) string {
	if l.of.Load() == 0 {
		return ""
	}
	elapsed := time.Since(time.Unix(0, l.start.Load()))
	window := time.Duration(l.window.Load())
	frac := 1.0
	if window > 0 {
		frac = min(max(elapsed.Seconds()/window.Seconds(), 0), 1)
	}
	full := int(frac*float64(width) + 0.5)
	phase := "measure"
	if l.warm.Load() {
		phase = "warm-up"
	}
	done := l.done.Load()
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 {
		rate = float64(done) / s
	}
	return fmt.Sprintf("[%d/%d] %s %d  %s ▕%s%s▏ %5.1f/%.0fs  %d req  %.1f/s  %d errors",
		l.step.Load(), l.of.Load(), unit, l.level.Load(), phase, strings.Repeat("█", full), strings.Repeat("░", width-full),
		min(elapsed.Seconds(), window.Seconds()), window.Seconds(), done, rate, l.errors.Load())
}
