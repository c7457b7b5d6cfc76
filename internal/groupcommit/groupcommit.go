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
	// Set, when not nil, is the set-based call this job joins: the jobs of
	// one tenant with the same Set in a batch are sent as one statement.
	Set Set
	// Item is what the job hands its Set (its input, and where its answer goes).
	Item any
	// Queue adds the job's own statements to a batch (jobs without a Set);
	// their callbacks fill the request's results. It may be called more than once.
	Queue func(b *pgx.Batch)
	// Alone writes the same rows in a transaction of their own.
	Alone func(ctx context.Context) error

	done chan error
	err  error // this job's own failure inside a batch that committed
}

// Fail records that this job failed inside a set-based call whose batch
// still commits (the call reports each job's error on its own).
func (j *Job) Fail(err error) { j.err = err }

// Set writes many jobs of one tenant with one statement.
type Set interface {
	// Queue adds one statement for jobs (all of one tenant, in order) to b.
	// Its callback fills each job's Item and calls Fail on those that failed.
	Queue(b *pgx.Batch, jobs []*Job)
}

// ErrQueueFull answers a job whose tenant already has MaxQueued jobs waiting.
var ErrQueueFull = errors.New("groupcommit: this tenant has too many writes waiting")

// Committer gathers jobs into batches and commits them. It has no goroutine
// of its own: a batch starts when a job arrives or a batch ends, so an idle
// service does nothing.
type Committer struct {
	pool   *pgxpool.Pool
	role   string // the role each tenant's statements run as (set_config of role)
	window time.Duration

	// Observe, when set, is told the size of every batch and whether it fell back.
	Observe func(jobs, rows int, fellBack bool)

	mu        sync.Mutex
	queues    map[string][]*Job // per tenant, oldest first
	order     []string          // tenants with jobs waiting, in turn
	queued    int               // rows waiting
	inFlight  map[string]int    // batches in flight per tenant
	running   int               // batches in flight
	timer     *time.Timer       // the window of the oldest waiting job, when window > 0
	windowDue bool

	maxRows, maxWorkers, perTenant, maxQueued int

	batchJobs, batchRows prometheus.Histogram
	fallbacks            prometheus.Counter
}

// Defaults. A batch is what queued while earlier batches were written (no
// added wait: measured here, any window cost more latency than it saved
// commits), up to 2,000 rows. Three batches at once, at most two of one
// tenant (and always one fewer than the workers, so a flooding tenant leaves
// a worker for everyone else): batches of one tenant wait on each other's
// chain head, so a third would only hold a connection, while two let one
// batch decide while the other commits. So one tenant's batches grow with its
// load, and other tenants' writes go in the next batch. Measured with 16
// tenants and 16 clients: 8 workers made batches of one or two requests, each
// its own commit, at 0.39 of the plain baseline; 2 workers 0.57.
const (
	DefaultWindow    time.Duration = 0
	DefaultMaxRows                 = 2000
	DefaultWorkers                 = 3
	DefaultPerTenant               = 2
	DefaultMaxQueued               = 4096
)

// New returns a committer writing as role; window > 0 holds a batch until it
// has maxRows rows or the window passed (tests use it to decide what goes
// together). workers bounds the batches in flight.
func New(pool *pgxpool.Pool, role string, window time.Duration, maxRows, workers int) *Committer {
	sizes := prometheus.ExponentialBuckets(1, 2, 12) // 1 … 2048
	return &Committer{pool: pool, role: role, window: window, maxRows: max(1, maxRows),
		maxWorkers: max(1, workers), perTenant: max(1, min(DefaultPerTenant, workers-1)), maxQueued: DefaultMaxQueued,
		queues: map[string][]*Job{}, inFlight: map[string]int{},
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
// reports matches what was written. A waiting job holds no connection.
func (g *Committer) Submit(ctx context.Context, j *Job) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	j.done = make(chan error, 1)
	g.mu.Lock()
	q := g.queues[j.Tenant]
	if len(q) >= g.maxQueued {
		g.mu.Unlock()
		return ErrQueueFull
	}
	if len(q) == 0 {
		g.order = append(g.order, j.Tenant)
	}
	g.queues[j.Tenant] = append(q, j)
	g.queued += j.Rows
	if g.window > 0 && g.timer == nil {
		g.timer = time.AfterFunc(g.window, func() {
			g.mu.Lock()
			g.windowDue = true
			g.dispatch()
			g.mu.Unlock()
		})
	}
	g.dispatch()
	g.mu.Unlock()
	return <-j.done
}

// dispatch starts batches while a worker is free and some tenant with jobs
// waiting has fewer than perTenant batches in flight. Called with g.mu held.
func (g *Committer) dispatch() {
	for g.running < g.maxWorkers {
		if g.window > 0 && !g.windowDue && g.queued < g.maxRows {
			return
		}
		batch, rows := g.take()
		if len(batch) == 0 {
			return
		}
		if g.timer != nil {
			g.timer.Stop()
			g.timer, g.windowDue = nil, false
		}
		g.running++
		tenants := batchTenants(batch)
		for _, t := range tenants {
			g.inFlight[t]++
		}
		go func() {
			g.commit(batch, rows)
			g.mu.Lock()
			g.running--
			for _, t := range tenants {
				if g.inFlight[t]--; g.inFlight[t] == 0 {
					delete(g.inFlight, t)
				}
			}
			g.dispatch()
			g.mu.Unlock()
		}()
	}
}

// take forms a batch: one job of each eligible tenant in turn, so one busy
// tenant cannot fill a batch while another waits, until maxRows (a batch
// always takes at least one job). Called with g.mu held.
func (g *Committer) take() ([]*Job, int) {
	var batch []*Job
	rows := 0
	for {
		took := false
		for i := 0; i < len(g.order); i++ {
			t := g.order[i]
			if g.inFlight[t] >= g.perTenant {
				continue
			}
			q := g.queues[t]
			if len(batch) > 0 && rows+q[0].Rows > g.maxRows {
				return batch, rows
			}
			j := q[0]
			batch, rows, took = append(batch, j), rows+j.Rows, true
			g.queued -= j.Rows
			if len(q) == 1 {
				delete(g.queues, t)
				g.order = slices.Delete(g.order, i, i+1)
				i--
			} else {
				q[0] = nil
				g.queues[t] = q[1:]
			}
		}
		if !took || rows >= g.maxRows {
			return batch, rows
		}
	}
}

func batchTenants(batch []*Job) []string {
	var ts []string
	for _, j := range batch {
		if !slices.Contains(ts, j.Tenant) {
			ts = append(ts, j.Tenant)
		}
	}
	return ts
}

// groupTimeout bounds one batch transaction; the statement timeout bounds each statement.
const groupTimeout = 30 * time.Second

func (g *Committer) commit(batch []*Job, rows int) {
	ctx, cancel := context.WithTimeout(context.Background(), groupTimeout)
	defer cancel()
	// Ordered by tenant (stable, so each tenant's jobs keep their order): two
	// batches lock chain heads in the same order and cannot deadlock on them.
	slices.SortStableFunc(batch, func(a, b *Job) int { return cmp.Compare(a.Tenant, b.Tenant) })
	err := g.together(ctx, batch)
	// A batch is reported before its requests are answered, so whoever saw
	// the answer also sees the batch in the metrics.
	var unknown *commitUnknownError
	switch {
	case err == nil:
		g.report(len(batch), rows, false)
		for _, j := range batch {
			j.done <- j.err
		}
	case errors.As(err, &unknown):
		g.report(len(batch), rows, false)
		for _, j := range batch {
			j.done <- unknown.err
		}
	case len(batch) == 1:
		// Rolled back, and alone: its error is its own.
		g.report(1, rows, false)
		batch[0].done <- err
	default:
		// Rolled back: each job again, on its own.
		g.report(len(batch), rows, true)
		for _, j := range batch {
			j.done <- j.Alone(ctx)
		}
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

// commitUnknownError is a commit that may or may not have happened.
type commitUnknownError struct{ err error }

func (e *commitUnknownError) Error() string { return e.err.Error() }
func (e *commitUnknownError) Unwrap() error { return e.err }

// together writes a batch in one round trip and one transaction: the
// statements are pipelined with a single Sync, which PostgreSQL runs as one
// implicit transaction and commits at the Sync (an error anywhere rolls all
// of it back). The runtime role first, then for each tenant its app.tenant_id
// and its jobs' statements; the jobs of a tenant that share a Set go as one
// statement.
func (g *Committer) together(ctx context.Context, batch []*Job) error {
	for _, j := range batch {
		j.err = nil
	}
	b := &pgx.Batch{}
	b.Queue(`select set_config('role', $1::text, true)`, g.role)
	key := "" // app.key_hash as set so far (a Set's call restores it when it ends)
	for i := 0; i < len(batch); {
		j := batch[i]
		if i == 0 || batch[i-1].Tenant != j.Tenant {
			b.Queue(`select set_config('app.tenant_id', $1::text, true), set_config('app.key_hash', $2::text, true)`,
				j.Tenant, j.KeyHash)
			key = j.KeyHash
		}
		if j.Set == nil {
			if key != j.KeyHash {
				b.Queue(`select set_config('app.key_hash', $1::text, true)`, j.KeyHash)
				key = j.KeyHash
			}
			j.Queue(b)
			i++
			continue
		}
		n := i + 1
		for n < len(batch) && batch[n].Tenant == j.Tenant && batch[n].Set == j.Set {
			n++
		}
		j.Set.Queue(b, batch[i:n])
		i = n
	}
	conn, err := g.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	err = conn.SendBatch(ctx, b).Close()
	if err == nil {
		return nil
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) || ctx.Err() == nil && pgconn.SafeToRetry(err) {
		return err // the server refused it, or it was never sent
	}
	return &commitUnknownError{err: err}
}
