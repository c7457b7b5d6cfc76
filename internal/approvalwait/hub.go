package approvalwait

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/asi-labs/atl/internal/core"
	"github.com/jackc/pgx/v5"
)

// Bounds on waiting.
const (
	MaxWait                  = 50 * time.Second // under the server's 60 s write timeout
	DefaultPerTenant         = 64
	approvalNotifyChannel    = "atl_approval"
	approvalListenRetryFloor = 100 * time.Millisecond
)

// Key names one approval request of one tenant.
type Key struct{ Tenant, ID string }

// Hub holds the waiting requests and the listening connection, which
// it opens on the first wait and keeps open, reconnecting after a failure.
type Hub struct {
	connConfig *pgx.ConnConfig
	PerTenant  int
	log        *slog.Logger

	mu       sync.Mutex
	waiters  map[Key]map[chan struct{}]struct{}
	byTenant map[string]int
	started  bool
	closed   bool
	ctx      context.Context
	cancel   context.CancelFunc
	done     chan struct{}
}

func New(cfg *pgx.ConnConfig, perTenant int, log *slog.Logger) *Hub {
	ctx, cancel := context.WithCancel(context.Background())
	return &Hub{connConfig: cfg, PerTenant: perTenant, log: log, waiters: map[Key]map[chan struct{}]struct{}{},
		byTenant: map[string]int{}, ctx: ctx, cancel: cancel, done: make(chan struct{})}
}

// ErrClosed: the service is shutting down; waits end with the request as it is.
var ErrClosed = errors.New("approval hub closed")

// Add registers a waiter: core.ErrTooManyWaits() when the tenant already has
// PerTenant waiting, ErrClosed once the service is shutting down.
func (h *Hub) Add(k Key) (chan struct{}, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	if h.PerTenant > 0 && h.byTenant[k.Tenant] >= h.PerTenant {
		return nil, core.ErrTooManyWaits()
	}
	if !h.started {
		h.started = true
		go h.listen()
	}
	ch := make(chan struct{})
	if h.waiters[k] == nil {
		h.waiters[k] = map[chan struct{}]struct{}{}
	}
	h.waiters[k][ch] = struct{}{}
	h.byTenant[k.Tenant]++
	return ch, nil
}

// Remove ends one wait, whether it was woken or not.
func (h *Hub) Remove(k Key, ch chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if set, ok := h.waiters[k]; ok {
		if _, ok := set[ch]; ok {
			delete(set, ch)
			if len(set) == 0 {
				delete(h.waiters, k)
			}
			if h.byTenant[k.Tenant]--; h.byTenant[k.Tenant] <= 0 {
				delete(h.byTenant, k.Tenant)
			}
		}
	}
}

// wake ends the waits on one request (all requests when all is set): their
// handlers read the request again.
func (h *Hub) wake(k Key, all bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for key, set := range h.waiters {
		if !all && key != k {
			continue
		}
		for ch := range set {
			close(ch)
			delete(set, ch)
			if h.byTenant[key.Tenant]--; h.byTenant[key.Tenant] <= 0 {
				delete(h.byTenant, key.Tenant)
			}
		}
		delete(h.waiters, key)
	}
}

// Waiting counts the waiters of one request (for tests and stats).
func (h *Hub) Waiting(k Key) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.waiters[k])
}

// Close wakes every waiter and stops listening; later waits answer at once.
func (h *Hub) Close() {
	h.mu.Lock()
	h.closed = true
	started := h.started
	h.mu.Unlock()
	h.cancel()
	h.wake(Key{}, true)
	if started {
		<-h.done
	}
}

// listen keeps one LISTEN connection open until close. After a reconnect it
// wakes every waiter, since a notification may have been missed meanwhile.
func (h *Hub) listen() {
	defer close(h.done)
	backoff := approvalListenRetryFloor
	for h.ctx.Err() == nil {
		err := h.listenOnce()
		if h.ctx.Err() != nil {
			return
		}
		h.log.Warn("approval listener lost its connection; reconnecting", "error", err.Error())
		h.wake(Key{}, true)
		select {
		case <-time.After(backoff):
		case <-h.ctx.Done():
			return
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (h *Hub) listenOnce() error {
	conn, err := pgx.ConnectConfig(h.ctx, h.connConfig)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(h.ctx, "listen "+approvalNotifyChannel); err != nil {
		return err
	}
	// Waits that began before this connection listened may have missed their notification.
	h.wake(Key{}, true)
	for {
		n, err := conn.WaitForNotification(h.ctx)
		if err != nil {
			return err
		}
		if tenant, id, ok := strings.Cut(n.Payload, " "); ok {
			h.wake(Key{Tenant: tenant, ID: id}, false)
		}
	}
}
