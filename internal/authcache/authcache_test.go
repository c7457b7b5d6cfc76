package authcache

import (
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/core"
	"github.com/stretchr/testify/require"
)

// clock is a time the test moves by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestAuthCache(t *testing.T) {
	t.Parallel()
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	c := New(2*time.Second, 3)
	c.Now = clk.now
	p := core.Principal{TenantID: "acme", KeyID: "k1", Role: "agent", Subject: "bot"}

	_, gen, ok := c.Get("secret-1")
	require.False(t, ok)
	c.Put("secret-1", p, gen)
	got, _, ok := c.Get("secret-1")
	require.True(t, ok)
	require.Equal(t, p, got)
	_, _, ok = c.Get("secret-2")
	require.False(t, ok, "another key is not the cached one")

	clk.t = clk.t.Add(2 * time.Second)
	_, _, ok = c.Get("secret-1")
	require.False(t, ok, "expired after the TTL")

	_, gen, _ = c.Get("secret-1")
	c.Put("secret-1", p, gen)
	c.Forget("beta", "k1")
	_, _, ok = c.Get("secret-1")
	require.True(t, ok, "a key id of another tenant is another key")
	c.Forget("acme", "k1")
	_, _, ok = c.Get("secret-1")
	require.False(t, ok, "forgotten when revoked")

	_, gen, _ = c.Get("secret-1")
	c.Forget("acme", "k9") // a revocation lands while this lookup is in flight
	c.Put("secret-1", p, gen)
	_, _, ok = c.Get("secret-1")
	require.False(t, ok, "a lookup that raced a revocation is not kept")

	for i, k := range []string{"a", "b", "c", "d"} {
		_, gen, _ := c.Get(k)
		c.Put(k, core.Principal{KeyID: k}, gen)
		require.LessOrEqual(t, len(c.m), 3, "bounded (after %d)", i)
	}
	require.Nil(t, New(0, 10), "0: no cache")
	var off *Cache
	_, _, ok = off.Get("x")
	require.False(t, ok)
}
