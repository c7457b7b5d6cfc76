package main

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

// Waiting for a decision: GET /api/v1/approvals/{id}?wait=30s answers at once
// unless the request is PENDING; then it waits until the request's status
// changes or the wait ends, and answers the request as it is then. One
// connection per process LISTENs on atl_approval (migration 011) and wakes the
// waiters of the request named; nothing polls the table.

// Bounds on waiting.
const (
	maxApprovalWait          = 50 * time.Second // under the server's 60 s write timeout
	defaultWaitersPerTenant  = 64
	approvalNotifyChannel    = "atl_approval"
	approvalListenRetryFloor = 100 * time.Millisecond
)

type waitKey struct{ tenant, id string }

// approvalHub holds the waiting requests and the listening connection, which
// it opens on the first wait and keeps open, reconnecting after a failure.
type approvalHub struct {
	connConfig *pgx.ConnConfig
	perTenant  int
	log        *slog.Logger

	mu       sync.Mutex
	waiters  map[waitKey]map[chan struct{}]struct{}
	byTenant map[string]int
	started  bool
	closed   bool
	ctx      context.Context
	cancel   context.CancelFunc
	done     chan struct{}
}

func newApprovalHub(cfg *pgx.ConnConfig, perTenant int, log *slog.Logger) *approvalHub {
	ctx, cancel := context.WithCancel(context.Background())
	return &approvalHub{connConfig: cfg, perTenant: perTenant, log: log, waiters: map[waitKey]map[chan struct{}]struct{}{},
		byTenant: map[string]int{}, ctx: ctx, cancel: cancel, done: make(chan struct{})}
}

// errHubClosed: the service is shutting down; waits end with the request as it is.
var errHubClosed = errors.New("approval hub closed")

// add registers a waiter: errTooManyWaits() when the tenant already has
// perTenant waiting, errHubClosed once the service is shutting down.
func (h *approvalHub) add(k waitKey) (chan struct{}, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errHubClosed
	}
	if h.perTenant > 0 && h.byTenant[k.tenant] >= h.perTenant {
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
	h.byTenant[k.tenant]++
	return ch, nil
}

func (h *approvalHub) remove(k waitKey, ch chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if set, ok := h.waiters[k]; ok {
		if _, ok := set[ch]; ok {
			delete(set, ch)
			if len(set) == 0 {
				delete(h.waiters, k)
			}
			if h.byTenant[k.tenant]--; h.byTenant[k.tenant] <= 0 {
				delete(h.byTenant, k.tenant)
			}
		}
	}
}

// wake ends the waits on one request (all requests when all is set): their
// handlers read the request again.
func (h *approvalHub) wake(k waitKey, all bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for key, set := range h.waiters {
		if !all && key != k {
			continue
		}
		for ch := range set {
			close(ch)
			delete(set, ch)
			if h.byTenant[key.tenant]--; h.byTenant[key.tenant] <= 0 {
				delete(h.byTenant, key.tenant)
			}
		}
		delete(h.waiters, key)
	}
}

// waiting counts the waiters of one request (for tests and stats).
func (h *approvalHub) waiting(k waitKey) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.waiters[k])
}

// close wakes every waiter and stops listening; later waits answer at once.
func (h *approvalHub) close() {
	h.mu.Lock()
	h.closed = true
	started := h.started
	h.mu.Unlock()
	h.cancel()
	h.wake(waitKey{}, true)
	if started {
		<-h.done
	}
}

// listen keeps one LISTEN connection open until close. After a reconnect it
// wakes every waiter, since a notification may have been missed meanwhile.
func (h *approvalHub) listen() {
	defer close(h.done)
	backoff := approvalListenRetryFloor
	for h.ctx.Err() == nil {
		err := h.listenOnce()
		if h.ctx.Err() != nil {
			return
		}
		h.log.Warn("approval listener lost its connection; reconnecting", "error", err.Error())
		h.wake(waitKey{}, true)
		select {
		case <-time.After(backoff):
		case <-h.ctx.Done():
			return
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (h *approvalHub) listenOnce() error {
	conn, err := pgx.ConnectConfig(h.ctx, h.connConfig)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(h.ctx, "listen "+approvalNotifyChannel); err != nil {
		return err
	}
	// Waits that began before this connection listened may have missed their notification.
	h.wake(waitKey{}, true)
	for {
		n, err := conn.WaitForNotification(h.ctx)
		if err != nil {
			return err
		}
		if tenant, id, ok := strings.Cut(n.Payload, " "); ok {
			h.wake(waitKey{tenant: tenant, id: id}, false)
		}
	}
}
