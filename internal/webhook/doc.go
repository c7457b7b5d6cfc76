// Package webhook owns the delivery worker of the webhook outbox: it claims
// due deliveries of every tenant, POSTs them signed through the egress client,
// and records each attempt. Every claimed delivery is sent at once, so its
// lease covers one call. It wakes on NOTIFY atl_webhook (sent by the outbox
// trigger at commit) and on a timer for the next due retry, so nothing polls
// the table while there is nothing to do. Delivery is at least once: a crash
// between the receiver's answer and the record repeats it.
//
// It must not decide what is delivered or to whom (the SQL outbox does), open
// a client of its own, or choose its role: the store's WorkerTx is passed in.
package webhook
