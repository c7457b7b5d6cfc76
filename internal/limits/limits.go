package limits

import (
	"context"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/asi-labs/atl/internal/core"
)

// RateLimiter is a token bucket per API key: rate tokens a second, up to
// burst. A nil limiter lets everything through.
type RateLimiter struct {
	Rate, Burst float64
	Now         func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func NewRateLimiter(rate float64, burst int) *RateLimiter {
	if rate <= 0 {
		return nil
	}
	if burst < 1 {
		burst = int(math.Ceil(rate))
	}
	return &RateLimiter{Rate: rate, Burst: float64(burst), Now: time.Now, buckets: map[string]*bucket{}}
}

// Allow takes a token for key, or says how long until one is there.
func (l *RateLimiter) Allow(key string) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.Now()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= 100_000 {
			l.evictFull(now)
		}
		b = &bucket{tokens: l.Burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = math.Min(l.Burst, b.tokens+now.Sub(b.last).Seconds()*l.Rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / l.Rate * float64(time.Second))
}

// evictFull forgets buckets that have refilled: they hold nothing a new one would not.
func (l *RateLimiter) evictFull(now time.Time) {
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.Rate >= l.Burst {
			delete(l.buckets, k)
		}
	}
}

// TenantSlots bounds the database transactions one tenant may have open at
// once, so a tenant that floods the service queues on its own slots instead of
// holding every pooled connection. A nil bound lets everything through.
type TenantSlots struct {
	max  int
	wait time.Duration

	mu      sync.Mutex
	tenants map[string]*tenantSem
	busy    uint64 // requests refused after waiting wait
}

type tenantSem struct {
	ch   chan struct{}
	refs int // holders and waiters; the entry goes when it falls to 0
}

func NewTenantSlots(max int, wait time.Duration) *TenantSlots {
	if max <= 0 {
		return nil
	}
	return &TenantSlots{max: max, wait: wait, tenants: map[string]*tenantSem{}}
}

// ErrTenantBusy answers a request that waited too long for one of its
// tenant's slots, or found too many of its tenant's writes queued.
func ErrTenantBusy() *core.Error {
	return &core.Error{Status: http.StatusTooManyRequests, Code: "tenant_busy",
		Message: "this tenant has too many requests in progress; retry later", RetryAfter: 1}
}

// Acquire takes one of tenant's slots, waiting at most l.wait; release gives it back.
func (l *TenantSlots) Acquire(ctx context.Context, tenant string) (release func(), err error) {
	if l == nil {
		return func() {}, nil
	}
	l.mu.Lock()
	sem, ok := l.tenants[tenant]
	if !ok {
		sem = &tenantSem{ch: make(chan struct{}, l.max)}
		l.tenants[tenant] = sem
	}
	sem.refs++
	l.mu.Unlock()
	done := func() {
		l.mu.Lock()
		if sem.refs--; sem.refs == 0 {
			delete(l.tenants, tenant)
		}
		l.mu.Unlock()
	}
	select {
	case sem.ch <- struct{}{}:
		return func() { <-sem.ch; done() }, nil
	default:
	}
	timer := time.NewTimer(l.wait)
	defer timer.Stop()
	select {
	case sem.ch <- struct{}{}:
		return func() { <-sem.ch; done() }, nil
	case <-ctx.Done():
		done()
		return nil, ctx.Err()
	case <-timer.C:
		done()
		l.mu.Lock()
		l.busy++
		l.mu.Unlock()
		return nil, ErrTenantBusy()
	}
}

// Stats reports the bound, how many tenants are in the database now, how
// many requests hold or wait for a slot, and how many were refused.
func (l *TenantSlots) Stats() map[string]any {
	if l == nil {
		return map[string]any{"max_per_tenant": 0}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	inUse, queued := 0, 0
	for _, sem := range l.tenants {
		n := len(sem.ch)
		inUse += n
		queued += sem.refs - n
	}
	return map[string]any{"max_per_tenant": l.max, "wait_ms": l.wait.Milliseconds(), "tenants_active": len(l.tenants),
		"in_use": inUse, "queued": queued, "refused_total": l.busy}
}
