package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/asi-labs/atl/internal/core"
	"github.com/julienschmidt/httprouter"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are what GET /metrics exposes, in a registry of the service's own
// so that tests can run several services in one process.
type metrics struct {
	registry *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	rows     *prometheus.CounterVec
}

func newMetrics(store core.Store) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "atl_http_requests_total",
			Help: "HTTP requests answered, by method, route (ids replaced by :id) and status."}, []string{"method", "route", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "atl_http_request_duration_seconds",
			Help:    "Time to answer an HTTP request, by method, route and status.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"method", "route", "status"}),
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "atl_rows_written_total",
			Help: "Rows the service committed to the audit trail: table is audit_logs or agent_action_events."}, []string{"table"}),
	}
	m.registry.MustRegister(m.requests, m.latency, m.rows,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if pg, ok := store.(*PGStore); ok {
		m.registry.MustRegister(poolCollector{pg})
		if g := pg.group; g != nil {
			m.registry.MustRegister(g.Collectors()...)
		}
	}
	return m
}

// instrument wraps the store to count rows written and sets up the metrics, once.
func (a *App) instrument() {
	if a.metrics != nil {
		return
	}
	a.metrics = newMetrics(a.store)
	a.store = countingStore{Store: a.store, rows: a.metrics.rows}
}

// observe records one answered request.
func (m *metrics) observe(method, route string, status int, took time.Duration) {
	s := strconv.Itoa(status)
	m.requests.WithLabelValues(method, route, s).Inc()
	m.latency.WithLabelValues(method, route, s).Observe(took.Seconds())
}

func (a *App) metricsHandler(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	promhttp.HandlerFor(a.metrics.registry, promhttp.HandlerOpts{}).ServeHTTP(w, r)
	return nil
}

var (
	poolDescs = map[string]*prometheus.Desc{
		"max":      prometheus.NewDesc("atl_db_pool_max_conns", "Most connections the pool may open.", nil, nil),
		"total":    prometheus.NewDesc("atl_db_pool_conns", "Connections open now.", nil, nil),
		"acquired": prometheus.NewDesc("atl_db_pool_acquired_conns", "Connections in use now.", nil, nil),
		"idle":     prometheus.NewDesc("atl_db_pool_idle_conns", "Connections idle now.", nil, nil),
		"acquires": prometheus.NewDesc("atl_db_pool_acquires_total", "Connections handed out.", nil, nil),
		"waits":    prometheus.NewDesc("atl_db_pool_empty_acquires_total", "Acquisitions that waited because no connection was idle.", nil, nil),
		"wait":     prometheus.NewDesc("atl_db_pool_acquire_wait_seconds_total", "Time spent waiting for connections.", nil, nil),
		"slots":    prometheus.NewDesc("atl_tenant_slots_in_use", "Database transactions open, across tenants, under the per-tenant bound.", nil, nil),
		"queued":   prometheus.NewDesc("atl_tenant_slots_queued", "Requests waiting for one of their tenant's slots.", nil, nil),
		"busy":     prometheus.NewDesc("atl_tenant_busy_total", "Requests answered 429 tenant_busy.", nil, nil),
	}
)

// poolCollector reads the pool's and the tenant slots' figures at scrape time.
type poolCollector struct{ s *PGStore }

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range poolDescs {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.pool.Stat()
	gauge := func(name string, v float64) {
		ch <- prometheus.MustNewConstMetric(poolDescs[name], prometheus.GaugeValue, v)
	}
	counter := func(name string, v float64) {
		ch <- prometheus.MustNewConstMetric(poolDescs[name], prometheus.CounterValue, v)
	}
	gauge("max", float64(st.MaxConns()))
	gauge("total", float64(st.TotalConns()))
	gauge("acquired", float64(st.AcquiredConns()))
	gauge("idle", float64(st.IdleConns()))
	counter("acquires", float64(st.AcquireCount()))
	counter("waits", float64(st.EmptyAcquireCount()))
	counter("wait", st.AcquireDuration().Seconds())
	slots := c.s.slots.Stats()
	inUse, _ := slots["in_use"].(int)
	queued, _ := slots["queued"].(int)
	busy, _ := slots["refused_total"].(uint64)
	gauge("slots", float64(inUse))
	gauge("queued", float64(queued))
	counter("busy", float64(busy))
}

// countingStore counts the audit rows and events each successful write
// committed, for atl_rows_written_total; reads pass through.
type countingStore struct {
	core.Store
	rows *prometheus.CounterVec
}

func (s countingStore) wrote(audits, events int) {
	if audits > 0 {
		s.rows.WithLabelValues("audit_logs").Add(float64(audits))
	}
	if events > 0 {
		s.rows.WithLabelValues("agent_action_events").Add(float64(events))
	}
}

// Stats passes GET /api/v1/stats through to the store underneath.
func (s countingStore) Stats() map[string]any {
	if st, ok := s.Store.(interface{ Stats() map[string]any }); ok {
		return st.Stats()
	}
	return nil
}

// audited counts the one audit row a write appends when it succeeds.
func audited(s countingStore, audit *core.AuditLog, err error) {
	if err == nil && audit != nil {
		s.wrote(1, 0)
	}
}

func (s countingStore) IssueKey(ctx context.Context, p core.Principal, role, subject string, agents []string, audit *core.AuditLog) (core.APIKey, error) {
	k, err := s.Store.IssueKey(ctx, p, role, subject, agents, audit)
	audited(s, audit, err)
	return k, err
}

func (s countingStore) RevokeKey(ctx context.Context, p core.Principal, id string, audit *core.AuditLog) (core.APIKey, error) {
	k, err := s.Store.RevokeKey(ctx, p, id, audit)
	audited(s, audit, err)
	return k, err
}

func (s countingStore) RotateKey(ctx context.Context, p core.Principal, id string, overlap time.Duration, audit *core.AuditLog) (core.KeyRotation, error) {
	r, err := s.Store.RotateKey(ctx, p, id, overlap, audit)
	audited(s, audit, err)
	return r, err
}

func (s countingStore) InsertAudit(ctx context.Context, p core.Principal, audit *core.AuditLog) error {
	err := s.Store.InsertAudit(ctx, p, audit)
	audited(s, audit, err)
	return err
}

func (s countingStore) InsertEvents(ctx context.Context, p core.Principal, events []core.Event, audit *core.AuditLog) ([]core.Event, error) {
	out, err := s.Store.InsertEvents(ctx, p, events, audit)
	if err == nil {
		s.wrote(0, len(out))
	}
	audited(s, audit, err)
	return out, err
}

func (s countingStore) PutPolicy(ctx context.Context, p core.Principal, in core.PolicyInput, audit *core.AuditLog) (json.RawMessage, error) {
	out, err := s.Store.PutPolicy(ctx, p, in, audit)
	audited(s, audit, err)
	return out, err
}

func (s countingStore) DeletePolicy(ctx context.Context, p core.Principal, tool string, audit *core.AuditLog) (json.RawMessage, error) {
	out, err := s.Store.DeletePolicy(ctx, p, tool, audit)
	audited(s, audit, err)
	return out, err
}

func (s countingStore) PutTenantSettings(ctx context.Context, p core.Principal, in core.TenantSettings, audit *core.AuditLog) (json.RawMessage, error) {
	out, err := s.Store.PutTenantSettings(ctx, p, in, audit)
	audited(s, audit, err)
	return out, err
}

// Execute writes one event, and the audit row too unless a live call is
// still to be made (RecordOutcome writes it then); a replay writes nothing.
func (s countingStore) Execute(ctx context.Context, p core.Principal, in core.ExecuteInput) (core.GateResult, error) {
	res, err := s.Store.Execute(ctx, p, in)
	if err == nil && !res.Replayed {
		if res.Live != nil {
			s.wrote(0, 1)
		} else {
			s.wrote(1, 1)
		}
	}
	return res, err
}

func (s countingStore) RecordOutcome(ctx context.Context, p core.Principal, in core.OutcomeInput) (core.GateResult, error) {
	res, err := s.Store.RecordOutcome(ctx, p, in)
	if err == nil && !res.Replayed {
		s.wrote(1, 1)
	}
	return res, err
}

func (s countingStore) DecideApproval(ctx context.Context, p core.Principal, id, decision string, reason *string, audit *core.AuditLog) (json.RawMessage, error) {
	out, err := s.Store.DecideApproval(ctx, p, id, decision, reason, audit)
	audited(s, audit, err)
	return out, err
}

func (s countingStore) ExpireApprovals(ctx context.Context, p core.Principal, audit *core.AuditLog) (int, error) {
	n, err := s.Store.ExpireApprovals(ctx, p, audit)
	audited(s, audit, err)
	return n, err
}

func (s countingStore) StartEvalRun(ctx context.Context, p core.Principal, in core.EvalRunInput, audit *core.AuditLog) (json.RawMessage, error) {
	out, err := s.Store.StartEvalRun(ctx, p, in, audit)
	audited(s, audit, err)
	return out, err
}

func (s countingStore) CompleteEvalRun(ctx context.Context, p core.Principal, id string, results json.RawMessage, status, errText string, audit *core.AuditLog) (json.RawMessage, error) {
	out, err := s.Store.CompleteEvalRun(ctx, p, id, results, status, errText, audit)
	audited(s, audit, err)
	return out, err
}

func (s countingStore) PinEvalBaseline(ctx context.Context, p core.Principal, suite, runID string, audit *core.AuditLog) (json.RawMessage, error) {
	out, err := s.Store.PinEvalBaseline(ctx, p, suite, runID, audit)
	audited(s, audit, err)
	return out, err
}
