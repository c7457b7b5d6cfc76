package main

import (
	"context"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/core"
	"github.com/stretchr/testify/require"
)

// TestAuthCacheRevocation: a key revoked through the service is refused at
// once; one revoked behind its back (in SQL) only once the TTL is over.
func TestAuthCacheRevocation(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	at := time.Now() // the cache's clock, moved by hand
	store := NewPGStore(pool).WithAuthCache(time.Minute)
	store.auth.Now = func() time.Time { return at }
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
	at = at.Add(time.Minute)
	_, err = store.Authenticate(ctx, k2.APIKey)
	require.ErrorIs(t, err, core.ErrUnauthorized(), "refused once the TTL is over")
}
