// Package egress owns ATL's outbound HTTP: the client that live tool calls
// and webhook deliveries (and any later outbound call) use, and the one
// address filter it applies at connect time, after DNS, so a name that
// resolves (or re-resolves) to an internal address is refused too. CallLive
// makes a live tool call and bounds the answer it keeps; LiveError words a
// failed call without echoing internal addresses.
//
// It must not know about tenants, policies or the database: callers pass a
// URL and get an answer or an error.
package egress
