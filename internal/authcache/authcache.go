package authcache

import (
	"crypto/sha256"
	"sync"
	"time"

	"github.com/asi-labs/atl/internal/core"
)

// Cache remembers, for a short time, which principal an API key
// authenticated as, so that a busy agent does not cost a database round trip
// per request. It is keyed by the key's SHA-256 (the secret itself is not
// kept), holds only successful lookups, and forgets a key at once when it is
// revoked through this process. A key revoked elsewhere (another replica, or a
// DBA in SQL) keeps working here for at most the TTL.
type Cache struct {
	ttl time.Duration
	max int
	Now func() time.Time // the clock; a test may replace it

	mu  sync.Mutex
	m   map[[32]byte]authEntry
	gen uint64 // counts revocations, so a lookup that raced one is not kept
}

type authEntry struct {
	p       core.Principal
	expires time.Time
}

// DefaultTTL bounds how long a key revoked outside this process still works here.
const (
	DefaultTTL  = 2 * time.Second
	DefaultKeys = 10000
)

// New returns nil (no caching) when ttl is 0.
func New(ttl time.Duration, maxKeys int) *Cache {
	if ttl <= 0 {
		return nil
	}
	return &Cache{ttl: ttl, max: max(1, maxKeys), Now: time.Now, m: map[[32]byte]authEntry{}}
}

// Get returns the cached principal, or the generation to hand to Put after
// looking the key up.
func (c *Cache) Get(apiKey string) (core.Principal, uint64, bool) {
	if c == nil {
		return core.Principal{}, 0, false
	}
	h := sha256.Sum256([]byte(apiKey))
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[h]
	if ok && c.Now().Before(e.expires) {
		return e.p, c.gen, true
	}
	delete(c.m, h)
	return core.Principal{}, c.gen, false
}

// Put keeps a lookup, unless a key was revoked since it started.
func (c *Cache) Put(apiKey string, p core.Principal, gen uint64) {
	if c == nil {
		return
	}
	h := sha256.Sum256([]byte(apiKey))
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if len(c.m) >= c.max {
		now := c.Now()
		for k, e := range c.m {
			if !now.Before(e.expires) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= c.max {
			clear(c.m) // all live: start afresh rather than grow
		}
	}
	c.m[h] = authEntry{p: p, expires: c.Now().Add(c.ttl)}
}

// Forget drops every cached lookup of the key with this id.
func (c *Cache) Forget(tenant, keyID string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for k, e := range c.m {
		if e.p.KeyID == keyID && e.p.TenantID == tenant {
			delete(c.m, k)
		}
	}
}
