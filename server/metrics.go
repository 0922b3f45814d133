package server

import (
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/voxserve/voxserve/engine"
)

// Metrics are served on the HTTP address at /metrics. The per-model
// counters use Triton's names and meanings (nv_inference_*, cumulative
// microseconds), so that Triton dashboards work; voxserve's own are
// prefixed voxserve_. The engine keeps the counters; this collector reads
// them at scrape time, so that ModelStatistics-style numbers and the
// metrics can never disagree.

var (
	labels     = []string{"model", "version"}
	mSuccess   = prometheus.NewDesc("nv_inference_request_success", "Number of successful inference requests, all batch sizes.", labels, nil)
	mFailure   = prometheus.NewDesc("nv_inference_request_failure", "Number of failed inference requests, all batch sizes.", labels, nil)
	mCount     = prometheus.NewDesc("nv_inference_count", "Number of inferences performed (batch items).", labels, nil)
	mExec      = prometheus.NewDesc("nv_inference_exec_count", "Number of model executions (batches).", labels, nil)
	mRequest   = prometheus.NewDesc("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds, queue included.", labels, nil)
	mQueue     = prometheus.NewDesc("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds.", labels, nil)
	mInput     = prometheus.NewDesc("nv_inference_compute_input_duration_us", "Cumulative compute input duration (batch assembly) in microseconds, per request: a batch of k counts k times, as in Triton.", labels, nil)
	mInfer     = prometheus.NewDesc("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds, per request (a batch of k counts k times).", labels, nil)
	mOutput    = prometheus.NewDesc("nv_inference_compute_output_duration_us", "Cumulative compute output duration in microseconds, per request (a batch of k counts k times).", labels, nil)
	mDepth     = prometheus.NewDesc("voxserve_queue_depth", "Requests waiting, per priority level (1 is STAT).", append(labels, "priority"), nil)
	mBatch     = prometheus.NewDesc("voxserve_batch_size", "Model executions by batch size.", labels, nil)
	mRejected  = prometheus.NewDesc("voxserve_rejected_requests_total", "Requests refused or dropped by the scheduler, by reason.", append(labels, "reason"), nil)
	mInfo      = prometheus.NewDesc("voxserve_model_info", "A loaded model version, the execution provider it runs on, and where its inputs and outputs are bound: device, host or off (always 1).", append(labels, "provider", "io_binding"), nil)
	batchEdges = []float64{1, 2, 4, 8, 16, 32, 64, 128}
)

type collector struct{ reg *engine.Registry }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mSuccess, mFailure, mCount, mExec, mRequest, mQueue, mInput, mInfer, mOutput, mDepth, mBatch, mRejected, mInfo} {
		ch <- d
	}
}

func us(d time.Duration) float64 { return float64(d.Microseconds()) }

func (c collector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.reg.Models() {
		st := m.Stats()
		lv := []string{m.Spec.Name, m.VersionString()}
		counter := func(d *prometheus.Desc, v float64, extra ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, append(lv, extra...)...)
		}
		ch <- prometheus.MustNewConstMetric(mInfo, prometheus.GaugeValue, 1, append(lv, m.Provider(), ioBindingKind(m.IOBinding()))...)
		counter(mSuccess, float64(st.Success))
		counter(mFailure, float64(st.Failure))
		counter(mCount, float64(st.Inferences))
		counter(mExec, float64(st.Executions))
		counter(mRequest, us(st.RequestTime))
		counter(mQueue, us(st.QueueTime))
		counter(mInput, us(st.RequestInputTime))
		counter(mInfer, us(st.RequestInferTime))
		counter(mOutput, us(st.RequestOutputTime))
		counter(mRejected, float64(st.Rejected), "queue_full")
		counter(mRejected, float64(st.Expired), "deadline")
		for i, d := range st.QueueDepth {
			ch <- prometheus.MustNewConstMetric(mDepth, prometheus.GaugeValue, float64(d), append(lv, strconv.Itoa(i+1))...)
		}
		buckets := map[float64]uint64{}
		var count uint64
		var sum float64
		for size, b := range st.BatchSizes {
			n := b.Count
			count += uint64(n)
			sum += float64(size) * float64(n)
			for _, e := range batchEdges {
				if float64(size) <= e {
					buckets[e] += uint64(n)
				}
			}
		}
		ch <- prometheus.MustNewConstHistogram(mBatch, count, sum, buckets, lv...)
	}
}

// newPreprocessHistogram times study preprocessing (DICOM reading, series
// assembly and the bundle's preprocessing) per model and version.
func newPreprocessHistogram() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "voxserve_preprocess_duration_seconds",
		Help:    "Time to turn a study (DICOM or volume) into model input: reading, series assembly, preprocessing.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14), // 1 ms to 8 s
	}, labels)
}

// securityMetrics count what an alert on access and auditing watches.
type securityMetrics struct {
	refused       *prometheus.CounterVec
	auditFailures prometheus.Counter
}

func newSecurityMetrics() *securityMetrics {
	m := &securityMetrics{
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "voxserve_refused_calls_total",
			Help: "Calls refused for want of credentials (Unauthenticated) or of a role (PermissionDenied).",
		}, []string{"code"}),
		auditFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "voxserve_audit_write_failures_total",
			Help: "Audit records that could not be written.",
		}),
	}
	for _, c := range []string{"Unauthenticated", "PermissionDenied"} {
		m.refused.WithLabelValues(c)
	}
	return m
}

// metricsRegistry holds voxserve's collector, the preprocessing histogram,
// the security counters and Go's process metrics.
func metricsRegistry(reg *engine.Registry, prep *prometheus.HistogramVec, sec *securityMetrics) *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collector{reg: reg}, prep, sec.refused, sec.auditFailures,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// ioBindingKind shortens engine.Model.IOBinding to a label value.
func ioBindingKind(where string) string {
	switch {
	case strings.HasPrefix(where, "device"):
		return "device"
	case strings.HasPrefix(where, "host"):
		return "host"
	}
	return "off"
}
