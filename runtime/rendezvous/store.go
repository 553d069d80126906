package rendezvous

import (
	"context"
	"errors"
)

// Errors a Store returns. Wrap them with context (the endpoint, the key);
// callers test with errors.Is.
var (
	ErrNotFound = errors.New("rendezvous: no such key")
	ErrClosed   = errors.New("rendezvous: store closed")
	// ErrAuth: the endpoint answered but the job token did not match.
	ErrAuth = errors.New("rendezvous: the store refused this job's token")
)

// Store is the small key-value store the launchers of one job meet in.
// Keys are opaque strings (callers namespace them by run id); values are
// bytes. Every method returns promptly when ctx ends, with an error that
// wraps ctx's. A Store is safe for concurrent use: a blocking Wait in one
// goroutine does not hold up a Set in another.
type Store interface {
	// Set stores value under key, replacing any value.
	Set(ctx context.Context, key string, value []byte) error
	// Get returns key's value, or an error wrapping ErrNotFound.
	Get(ctx context.Context, key string) ([]byte, error)
	// Wait blocks until every key exists and returns their values in order.
	Wait(ctx context.Context, keys ...string) ([][]byte, error)
	// WaitChange blocks until key's value differs from old (nil: the key
	// is missing) and returns the new value (nil if it was deleted). It
	// returns at once if the value already differs.
	WaitChange(ctx context.Context, key string, old []byte) ([]byte, error)
	// Add atomically adds delta to the counter in key (a missing key
	// counts as 0) and returns the new count.
	Add(ctx context.Context, key string, delta int64) (int64, error)
	// CompareAndSwap sets key to new if its value equals old (nil old: if
	// the key is missing). It returns the value after the call and whether
	// it swapped.
	CompareAndSwap(ctx context.Context, key string, old, new []byte) (cur []byte, swapped bool, err error)
	// Delete removes key; a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// Close releases the store's connections. Calls after Close, and
	// calls blocked in it, return ErrClosed.
	Close() error
}
