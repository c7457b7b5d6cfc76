package metrics

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/asi-labs/atl/internal/core"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are what GET /metrics exposes, in a registry of the service's own
// so that tests can run several services in one process.
type Metrics struct {
	registry *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	rows     *prometheus.CounterVec
}

// New registers the request and row counters, the Go and process collectors
// and extra (the store's pool and group commit figures, when it has them).
func New(extra ...prometheus.Collector) *Metrics {
	m := &Metrics{
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
	m.registry.MustRegister(extra...)
	return m
}

// Count wraps store so that each successful write counts the rows it committed.
func (m *Metrics) Count(store core.Store) core.Store {
	return CountingStore{Store: store, rows: m.rows}
}

// Observe records one answered request.
func (m *Metrics) Observe(method, route string, status int, took time.Duration) {
	s := strconv.Itoa(status)
	m.requests.WithLabelValues(method, route, s).Inc()
	m.latency.WithLabelValues(method, route, s).Observe(took.Seconds())
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
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
type poolCollector struct {
	pool  *pgxpool.Pool
	slots interface{ Stats() map[string]any }
}

// PoolCollector exposes the pool's connections and the per-tenant slots.
func PoolCollector(pool *pgxpool.Pool, slots interface{ Stats() map[string]any }) prometheus.Collector {
	return poolCollector{pool: pool, slots: slots}
}

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range poolDescs {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.pool.Stat()
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
	slots := c.slots.Stats()
	inUse, _ := slots["in_use"].(int)
	queued, _ := slots["queued"].(int)
	busy, _ := slots["refused_total"].(uint64)
	gauge("slots", float64(inUse))
	gauge("queued", float64(queued))
	counter("busy", float64(busy))
}

// CountingStore counts the audit rows and events each successful write
// committed, for atl_rows_written_total; reads pass through.
type CountingStore struct {
	core.Store
	rows *prometheus.CounterVec
}

func (s CountingStore) wrote(audits, events int) {
	if audits > 0 {
		s.rows.WithLabelValues("audit_logs").Add(float64(audits))
	}
	if events > 0 {
		s.rows.WithLabelValues("agent_action_events").Add(float64(events))
	}
}

// Stats passes GET /api/v1/stats through to the store underneath.
func (s CountingStore) Stats() map[string]any {
	if st, ok := s.Store.(interface{ Stats() map[string]any }); ok {
		return st.Stats()
	}
	return nil
}

// audited counts the one audit row a write appends when it succeeds.
func audited(s CountingStore, audit *core.AuditLog, err error) {
	if err == nil && audit != nil {
		s.wrote(1, 0)
	}
}

func (s CountingStore) IssueKey(ctx context.Context, p core.Principal, role, subject string, agents []string, audit *core.AuditLog) (core.APIKey, error) {
	k, err := s.Store.IssueKey(ctx, p, role, subject, agents, audit)
	audited(s, audit, err)
	return k, err
}

func (s CountingStore) RevokeKey(ctx context.Context, p core.Principal, id string, audit *core.AuditLog) (core.APIKey, error) {
	k, err := s.Store.RevokeKey(ctx, p, id, audit)
	audited(s, audit, err)
	return k, err
}

func (s CountingStore) RotateKey(ctx context.Context, p core.Principal, id string, overlap time.Duration, audit *core.AuditLog) (core.KeyRotation, error) {
	r, err := s.Store.RotateKey(ctx, p, id, overlap, audit)
	audited(s, audit, err)
	return r, err
}

func (s CountingStore) InsertAudit(ctx context.Context, p core.Principal, audit *core.AuditLog) error {
	err := s.Store.InsertAudit(ctx, p, audit)
	audited(s, audit, err)
	return err
}

func (s CountingStore) InsertEvents(ctx context.Context, p core.Principal, events []core.Event, audit *core.AuditLog) ([]core.Event, error) {
	out, err := s.Store.InsertEvents(ctx, p, events, audit)
	if err == nil {
		s.wrote(0, len(out))
	}
	audited(s, audit, err)
	return out, err
}

func (s CountingStore) PutPolicy(ctx context.Context, p core.Principal, in core.PolicyInput, audit *core.AuditLog) (json.RawMessage, error) {
	out, err := s.Store.PutPolicy(ctx, p, in, audit)
	audited(s, audit, err)
	return out, err
}

func (s CountingStore) DeletePolicy(ctx context.Context, p core.Principal, tool string, audit *core.AuditLog) (json.RawMessage, error) {
	out, err := s.Store.DeletePolicy(ctx, p, tool, audit)
	audited(s, audit, err)
	return out, err
}

func (s CountingStore) PutTenantSettings(ctx context.Context, p core.Principal, in core.TenantSettings, audit *core.AuditLog) (json.RawMessage, error) {
	out, err := s.Store.PutTenantSettings(ctx, p, in, audit)
	audited(s, audit, err)
	return out, err
}

// Execute writes one event, and the audit row too unless a live call is
// still to be made (RecordOutcome writes it then); a replay writes nothing.
func (s CountingStore) Execute(ctx context.Context, p core.Principal, in core.ExecuteInput) (core.GateResult, error) {
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

func (s CountingStore) RecordOutcome(ctx context.Context, p core.Principal, in core.OutcomeInput) (core.GateResult, error) {
	res, err := s.Store.RecordOutcome(ctx, p, in)
	if err == nil && !res.Replayed {
		s.wrote(1, 1)
	}
	return res, err
}

func (s CountingStore) DecideApproval(ctx context.Context, p core.Principal, id, decision string, reason *string, audit *core.AuditLog) (json.RawMessage, error) {
	out, err := s.Store.DecideApproval(ctx, p, id, decision, reason, audit)
	audited(s, audit, err)
	return out, err
}

func (s CountingStore) ExpireApprovals(ctx context.Context, p core.Principal, audit *core.AuditLog) (int, error) {
	n, err := s.Store.ExpireApprovals(ctx, p, audit)
	audited(s, audit, err)
	return n, err
}

func (s CountingStore) StartEvalRun(ctx context.Context, p core.Principal, in core.EvalRunInput, audit *core.AuditLog) (json.RawMessage, error) {
	out, err := s.Store.StartEvalRun(ctx, p, in, audit)
	audited(s, audit, err)
	return out, err
}

func (s CountingStore) CompleteEvalRun(ctx context.Context, p core.Principal, id string, results json.RawMessage, status, errText string, audit *core.AuditLog) (json.RawMessage, error) {
	out, err := s.Store.CompleteEvalRun(ctx, p, id, results, status, errText, audit)
	audited(s, audit, err)
	return out, err
}

func (s CountingStore) PinEvalBaseline(ctx context.Context, p core.Principal, suite, runID string, audit *core.AuditLog) (json.RawMessage, error) {
	out, err := s.Store.PinEvalBaseline(ctx, p, suite, runID, audit)
	audited(s, audit, err)
	return out, err
}
