// Package limits keeps one tenant or one key from starving the others: a
// token bucket per API key (RateLimiter) and a bounded number of concurrent
// database transactions per tenant (TenantSlots).
//
// It only counts and waits in memory, per process; it must not touch storage
// or decide who a caller is. A nil limiter lets everything through.
package limits
