package main

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

// Group commit: concurrent writes are gathered for a short window and written
// in one transaction, so that many requests share one commit (one WAL flush)
// and each tenant's chain head is locked once per batch instead of once per
// request. Within the transaction the jobs are ordered by tenant, and each
// tenant's jobs follow a set_config of app.tenant_id, so RLS checks every row
// as it would in a transaction of its own; ordering by tenant also means two
// batches lock chain heads in the same order and cannot deadlock on them.
//
// A request is answered only after its batch commits. When any statement of a
// batch fails, the transaction is rolled back (nothing of it was written) and
// every job is written again on its own, in its own transaction: a bad row
// fails only its own request, and no request is failed or written twice
// because of a neighbour. A commit whose outcome is unknown (the connection
// broke while COMMIT was in flight) is not retried: its jobs get the error,
// as a single request's commit would.

// groupJob is one request's writes waiting for a shared commit.
type groupJob struct {
	tenant string
	// keyHash names the acting key (app.key_hash) for this job's statements.
	keyHash string
	rows    int
	// queue adds the job's statements to a batch; their callbacks fill the
	// request's results. It may be called more than once.
	queue func(b *pgx.Batch)
	// alone writes the same rows in a transaction of their own.
	alone func(ctx context.Context) error
	done  chan error
}

// groupCommitter gathers jobs into batches and commits them, at most
// `workers` batches at once.
type groupCommitter struct {
	pool    *pgxpool.Pool
	window  time.Duration
	maxRows int
	jobs    chan *groupJob
	workers chan struct{}
	// observe, when set, is told the size of every batch and whether it fell back.
	observe func(jobs, rows int, fellBack bool)
	start   sync.Once

	batchJobs, batchRows prometheus.Histogram
	fallbacks            prometheus.Counter
}

// Defaults: no added wait (a batch is what queued while the previous ones
// were being written: measured here, any wait cost more latency than it saved
// commits), up to 2,000 rows (two full batch requests), two batches written at
// once (more made batches of the same tenants wait on each other's chain heads).
const (
	defaultGroupWindow  time.Duration = 0
	defaultGroupMaxRows               = 2000
	defaultGroupWorkers               = 2
)

func newGroupCommitter(pool *pgxpool.Pool, window time.Duration, maxRows, workers int) *groupCommitter {
	sizes := prometheus.ExponentialBuckets(1, 2, 12) // 1 … 2048
	return &groupCommitter{pool: pool, window: window, maxRows: max(1, maxRows),
		jobs: make(chan *groupJob, 4096), workers: make(chan struct{}, max(1, workers)),
		batchJobs: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "atl_group_commit_batch_requests",
			Help: "Requests written together in one group-commit transaction.", Buckets: sizes}),
		batchRows: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "atl_group_commit_batch_rows",
			Help: "Audit and event rows written together in one group-commit transaction.", Buckets: sizes}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{Name: "atl_group_commit_fallbacks_total",
			Help: "Batches rolled back on an error and written again one request at a time."}),
	}
}

// submit queues a job and waits until its batch committed or failed. A job
// that was queued is waited for even when ctx ends, so that what the caller
// reports matches what was written.
func (g *groupCommitter) submit(ctx context.Context, j *groupJob) error {
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
func (g *groupCommitter) run() {
	var pending *groupJob // a job that did not fit the previous batch
	for {
		first := pending
		pending = nil
		if first == nil {
			first = <-g.jobs
		}
		batch, rows := []*groupJob{first}, first.rows
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
				if rows+j.rows > g.maxRows {
					pending = j
				} else {
					batch, rows = append(batch, j), rows+j.rows
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
		go func(batch []*groupJob, rows int) {
			defer func() { <-g.workers }()
			g.commit(batch, rows)
		}(batch, rows)
	}
}

// groupTimeout bounds one batch transaction; the statement timeout bounds each statement.
const groupTimeout = 30 * time.Second

func (g *groupCommitter) commit(batch []*groupJob, rows int) {
	ctx, cancel := context.WithTimeout(context.Background(), groupTimeout)
	defer cancel()
	if len(batch) == 1 {
		batch[0].done <- batch[0].alone(ctx)
		g.report(1, rows, false)
		return
	}
	slices.SortStableFunc(batch, func(a, b *groupJob) int { return cmp.Compare(a.tenant, b.tenant) })
	err := g.together(ctx, batch)
	if err == nil {
		for _, j := range batch {
			j.done <- nil
		}
		g.report(len(batch), rows, false)
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
		j.done <- j.alone(ctx)
	}
}

func (g *groupCommitter) report(jobs, rows int, fellBack bool) {
	g.batchJobs.Observe(float64(jobs))
	g.batchRows.Observe(float64(rows))
	if fellBack {
		g.fallbacks.Inc()
	}
	if g.observe != nil {
		g.observe(jobs, rows, fellBack)
	}
}

// commitUnknownError is a COMMIT that may or may not have happened.
type commitUnknownError struct{ err error }

func (e *commitUnknownError) Error() string { return e.err.Error() }
func (e *commitUnknownError) Unwrap() error { return e.err }

// together writes a batch in one transaction: the runtime role, then for each
// tenant its app.tenant_id and its jobs' statements, all in one round trip.
func (g *groupCommitter) together(ctx context.Context, batch []*groupJob) error {
	tx, err := g.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	b := &pgx.Batch{}
	b.Queue(`select set_config('role', $1::text, true)`, runtimeRole)
	for i, j := range batch {
		if i == 0 || batch[i-1].tenant != j.tenant {
			b.Queue(`select set_config('app.tenant_id', $1::text, true)`, j.tenant)
		}
		if i == 0 || batch[i-1].tenant != j.tenant || batch[i-1].keyHash != j.keyHash {
			b.Queue(`select set_config('app.key_hash', $1::text, true)`, j.keyHash)
		}
		j.queue(b)
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
