package main

import (
	"context"
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
	c := newAuthCache(2*time.Second, 3)
	c.now = clk.now
	p := core.Principal{TenantID: "acme", KeyID: "k1", Role: "agent", Subject: "bot"}

	_, gen, ok := c.get("secret-1")
	require.False(t, ok)
	c.put("secret-1", p, gen)
	got, _, ok := c.get("secret-1")
	require.True(t, ok)
	require.Equal(t, p, got)
	_, _, ok = c.get("secret-2")
	require.False(t, ok, "another key is not the cached one")

	clk.t = clk.t.Add(2 * time.Second)
	_, _, ok = c.get("secret-1")
	require.False(t, ok, "expired after the TTL")

	_, gen, _ = c.get("secret-1")
	c.put("secret-1", p, gen)
	c.forget("beta", "k1")
	_, _, ok = c.get("secret-1")
	require.True(t, ok, "a key id of another tenant is another key")
	c.forget("acme", "k1")
	_, _, ok = c.get("secret-1")
	require.False(t, ok, "forgotten when revoked")

	_, gen, _ = c.get("secret-1")
	c.forget("acme", "k9") // a revocation lands while this lookup is in flight
	c.put("secret-1", p, gen)
	_, _, ok = c.get("secret-1")
	require.False(t, ok, "a lookup that raced a revocation is not kept")

	for i, k := range []string{"a", "b", "c", "d"} {
		_, gen, _ := c.get(k)
		c.put(k, core.Principal{KeyID: k}, gen)
		require.LessOrEqual(t, len(c.m), 3, "bounded (after %d)", i)
	}
	require.Nil(t, newAuthCache(0, 10), "0: no cache")
	var off *authCache
	_, _, ok = off.get("x")
	require.False(t, ok)
}

// TestAuthCacheRevocation: a key revoked through the service is refused at
// once; one revoked behind its back (in SQL) only once the TTL is over.
func TestAuthCacheRevocation(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	clk := &clock{t: time.Now()}
	store := NewPGStore(pool).WithAuthCache(time.Minute)
	store.auth.now = clk.now
	ctx := context.Background()
	_, admin, err := store.CreateTenant(ctx, "acme", "Acme")
	require.NoError(t, err)
	p, err := store.Authenticate(ctx, admin.APIKey)
	require.NoError(t, err)
	k1, err := store.IssueKey(ctx, p, "agent", "bot-1", nil, nil)
	require.NoError(t, err)
	k2, err := store.IssueKey(ctx, p, "agent", "bot-2", nil, nil)
	require.NoError(t, err)
	for _, k := range []core.APIKey{k1, k2} {
		got, err := store.Authenticate(ctx, k.APIKey)
		require.NoError(t, err)
		require.Equal(t, k.ID, got.KeyID)
	}

	_, err = store.RevokeKey(ctx, p, k1.ID, nil)
	require.NoError(t, err)
	_, err = store.Authenticate(ctx, k1.APIKey)
	require.ErrorIs(t, err, core.ErrUnauthorized(), "revoked through the service: refused at once")

	sqlKeys.Store(sqlKeyName(pool, "acme", "admin"), admin.APIKey)
	_, err = sqlAs(ctx, pool, "acme/admin", "select to_jsonb(k) from atl.api_key_revoke($1::uuid) k", k2.ID)
	require.NoError(t, err)
	_, err = store.Authenticate(ctx, k2.APIKey)
	require.NoError(t, err, "revoked in SQL: still cached here")
	clk.t = clk.t.Add(time.Minute)
	_, err = store.Authenticate(ctx, k2.APIKey)
	require.ErrorIs(t, err, core.ErrUnauthorized(), "refused once the TTL is over")
}
