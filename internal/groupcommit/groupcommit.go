package groupcommit

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// Job is one request's writes waiting for a shared commit.
type Job struct {
	Tenant string
	// KeyHash names the acting key (app.key_hash) for this job's statements.
	KeyHash string
	Rows    int
	// Queue adds the job's statements to a batch; their callbacks fill the
	// request's results. It may be called more than once.
	Queue func(b *pgx.Batch)
	// Alone writes the same rows in a transaction of their own.
	Alone func(ctx context.Context) error
	done  chan error
}

// Committer gathers jobs into batches and commits them, at most
// `workers` batches at once.
type Committer struct {
	pool    *pgxpool.Pool
	role    string // the role each tenant's statements run as (SET LOCAL ROLE)
	window  time.Duration
	maxRows int
	jobs    chan *Job
	workers chan struct{}
	// Observe, when set, is told the size of every batch and whether it fell back.
	Observe func(jobs, rows int, fellBack bool)
	start   sync.Once

	batchJobs, batchRows prometheus.Histogram
	fallbacks            prometheus.Counter
}

// Defaults: no added wait (a batch is what queued while the previous ones
// were being written: measured here, any wait cost more latency than it saved
// commits), up to 2,000 rows (two full batch requests), two batches written at
// once (more made batches of the same tenants wait on each other's chain heads).
const (
	DefaultWindow  time.Duration = 0
	DefaultMaxRows               = 2000
	DefaultWorkers               = 2
)

func New(pool *pgxpool.Pool, role string, window time.Duration, maxRows, workers int) *Committer {
	sizes := prometheus.ExponentialBuckets(1, 2, 12) // 1 … 2048
	return &Committer{pool: pool, role: role, window: window, maxRows: max(1, maxRows),
		jobs: make(chan *Job, 4096), workers: make(chan struct{}, max(1, workers)),
		batchJobs: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "atl_group_commit_batch_requests",
			Help: "Requests written together in one group-commit transaction.", Buckets: sizes}),
		batchRows: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "atl_group_commit_batch_rows",
			Help: "Audit and event rows written together in one group-commit transaction.", Buckets: sizes}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{Name: "atl_group_commit_fallbacks_total",
			Help: "Batches rolled back on an error and written again one request at a time."}),
	}
}

// Collectors are the committer's batch-size histograms and fallback counter.
func (g *Committer) Collectors() []prometheus.Collector {
	return []prometheus.Collector{g.batchJobs, g.batchRows, g.fallbacks}
}

// Submit queues a job and waits until its batch committed or failed. A job
// that was queued is waited for even when ctx ends, so that what the caller
// reports matches what was written.
func (g *Committer) Submit(ctx context.Context, j *Job) error {
	j.done = make(chan error, 1)
	g.start.Do(func() { go g.run() })
	select {
	case g.jobs <- j:
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-j.done
}

// run forms batches for the life of the process: it takes the first job,
// gathers more for the window, then goes on gathering until a worker is free
// or the batch is full, and hands the batch to that worker.
func (g *Committer) run() {
	var pending *Job // a job that did not fit the previous batch
	for {
		first := pending
		pending = nil
		if first == nil {
			first = <-g.jobs
		}
		batch, rows := []*Job{first}, first.Rows
		var windowC <-chan time.Time
		var timer *time.Timer
		if g.window > 0 {
			timer = time.NewTimer(g.window)
			windowC = timer.C
		}
		haveWorker := false
	gather:
		for pending == nil && rows < g.maxRows {
			var free chan struct{}
			if windowC == nil {
				free = g.workers
			}
			select {
			case j := <-g.jobs:
				if rows+j.Rows > g.maxRows {
					pending = j
				} else {
					batch, rows = append(batch, j), rows+j.Rows
				}
			case <-windowC:
				windowC = nil
			case free <- struct{}{}:
				haveWorker = true
				break gather
			}
		}
		if timer != nil {
			timer.Stop()
		}
		if !haveWorker {
			g.workers <- struct{}{}
		}
		go func(batch []*Job, rows int) {
			defer func() { <-g.workers }()
			g.commit(batch, rows)
		}(batch, rows)
	}
}

// groupTimeout bounds one batch transaction; the statement timeout bounds each statement.
const groupTimeout = 30 * time.Second

func (g *Committer) commit(batch []*Job, rows int) {
	ctx, cancel := context.WithTimeout(context.Background(), groupTimeout)
	defer cancel()
	// A batch is reported before its requests are answered, so whoever saw
	// the answer also sees the batch in the metrics.
	if len(batch) == 1 {
		err := batch[0].Alone(ctx)
		g.report(1, rows, false)
		batch[0].done <- err
		return
	}
	slices.SortStableFunc(batch, func(a, b *Job) int { return cmp.Compare(a.Tenant, b.Tenant) })
	err := g.together(ctx, batch)
	if err == nil {
		g.report(len(batch), rows, false)
		for _, j := range batch {
			j.done <- nil
		}
		return
	}
	var unknown *commitUnknownError
	if errors.As(err, &unknown) {
		for _, j := range batch {
			j.done <- unknown.err
		}
		return
	}
	// Rolled back: each job again, on its own.
	g.report(len(batch), rows, true)
	for _, j := range batch {
		j.done <- j.Alone(ctx)
	}
}

func (g *Committer) report(jobs, rows int, fellBack bool) {
	g.batchJobs.Observe(float64(jobs))
	g.batchRows.Observe(float64(rows))
	if fellBack {
		g.fallbacks.Inc()
	}
	if g.Observe != nil {
		g.Observe(jobs, rows, fellBack)
	}
}

// commitUnknownError is a COMMIT that may or may not have happened.
type commitUnknownError struct{ err error }

func (e *commitUnknownError) Error() string { return e.err.Error() }
func (e *commitUnknownError) Unwrap() error { return e.err }

// together writes a batch in one transaction: the runtime role, then for each
// Tenant its app.tenant_id and its jobs' statements, all in one round trip.
func (g *Committer) together(ctx context.Context, batch []*Job) error {
	tx, err := g.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	b := &pgx.Batch{}
	b.Queue(`select set_config('role', $1::text, true)`, g.role)
	for i, j := range batch {
		if i == 0 || batch[i-1].Tenant != j.Tenant {
			b.Queue(`select set_config('app.tenant_id', $1::text, true)`, j.Tenant)
		}
		if i == 0 || batch[i-1].Tenant != j.Tenant || batch[i-1].KeyHash != j.KeyHash {
			b.Queue(`select set_config('app.key_hash', $1::text, true)`, j.KeyHash)
		}
		j.Queue(b)
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) || errors.Is(err, pgx.ErrTxCommitRollback) {
			return err // the server rolled it back
		}
		return &commitUnknownError{err: err}
	}
	return nil
}
