package rendezvous

import (
	"context"
	"errors"
	"fmt"
)

// The Store methods of Client. Each checks its arguments against the
// limits before sending, so an oversized key or value fails here with a
// clear error instead of at the server.

func (c *Client) Set(ctx context.Context, key string, value []byte) error {
	if err := checkKeyValue(key, value); err != nil {
		return c.fail("set", key, err)
	}
	if value == nil {
		value = []byte{} // Set stores a value; nil is only "missing" on the wire
	}
	_, err := c.do(ctx, "set", key, &frame{Op: opSet, Keys: []string{key}, Vals: [][]byte{value}}, false)
	return err
}

func (c *Client) Get(ctx context.Context, key string) ([]byte, error) {
	if err := checkKey(key); err != nil {
		return nil, c.fail("get", key, err)
	}
	r, err := c.do(ctx, "get", key, &frame{Op: opGet, Keys: []string{key}}, true)
	if err != nil {
		return nil, err
	}
	if len(r.Vals) != 1 || r.Vals[0] == nil {
		return nil, c.fail("get", key, errors.New("malformed answer"))
	}
	return r.Vals[0], nil
}

func (c *Client) Wait(ctx context.Context, keys ...string) ([][]byte, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	for _, k := range keys {
		if err := checkKey(k); err != nil {
			return nil, c.fail("wait for", k, err)
		}
	}
	r, err := c.do(ctx, "wait for", keys[0], &frame{Op: opWait, Keys: keys}, true)
	if err != nil {
		return nil, err
	}
	if len(r.Vals) != len(keys) {
		return nil, c.fail("wait for", keys[0], fmt.Errorf("malformed answer: %d values for %d keys", len(r.Vals), len(keys)))
	}
	return r.Vals, nil
}

func (c *Client) WaitChange(ctx context.Context, key string, old []byte) ([]byte, error) {
	if err := checkKeyValue(key, old); err != nil {
		return nil, c.fail("wait for a change of", key, err)
	}
	r, err := c.do(ctx, "wait for a change of", key, &frame{Op: opWaitChange, Keys: []string{key}, Vals: [][]byte{old}}, true)
	if err != nil {
		return nil, err
	}
	if len(r.Vals) != 1 {
		return nil, c.fail("wait for a change of", key, errors.New("malformed answer"))
	}
	return r.Vals[0], nil
}

func (c *Client) Add(ctx context.Context, key string, delta int64) (int64, error) {
	if err := checkKey(key); err != nil {
		return 0, c.fail("add to", key, err)
	}
	r, err := c.do(ctx, "add to", key, &frame{Op: opAdd, Keys: []string{key}, Num: delta}, false)
	if err != nil {
		return 0, err
	}
	return r.Num, nil
}

func (c *Client) CompareAndSwap(ctx context.Context, key string, old, new []byte) ([]byte, bool, error) {
	if err := checkKeyValue(key, old); err != nil {
		return nil, false, c.fail("compare-and-swap", key, err)
	}
	if err := checkKeyValue(key, new); err != nil {
		return nil, false, c.fail("compare-and-swap", key, err)
	}
	if new == nil {
		new = []byte{}
	}
	r, err := c.do(ctx, "compare-and-swap", key, &frame{Op: opCAS, Keys: []string{key}, Vals: [][]byte{old, new}}, false)
	if err != nil {
		return nil, false, err
	}
	if len(r.Vals) != 1 {
		return nil, false, c.fail("compare-and-swap", key, errors.New("malformed answer"))
	}
	return r.Vals[0], r.Num == 1, nil
}

func (c *Client) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return c.fail("delete", key, err)
	}
	_, err := c.do(ctx, "delete", key, &frame{Op: opDelete, Keys: []string{key}}, false)
	return err
}

// do runs one request and turns a non-OK answer into an error naming the
// endpoint and key.
func (c *Client) do(ctx context.Context, op, key string, req *frame, retry bool) (*frame, error) {
	r, err := c.call(ctx, req, retry)
	if err != nil {
		return nil, c.fail(op, key, err)
	}
	switch r.Op {
	case statusOK:
		return r, nil
	case statusNotFound:
		return nil, c.fail(op, key, ErrNotFound)
	case statusClosed:
		return nil, c.fail(op, key, fmt.Errorf("the store shut down: %w", ErrClosed))
	case statusError:
		msg := "unknown error"
		if len(r.Vals) == 1 {
			msg = string(r.Vals[0])
		}
		return nil, c.fail(op, key, errors.New(msg))
	}
	return nil, c.fail(op, key, fmt.Errorf("malformed answer: status %#x", r.Op))
}

func (c *Client) fail(op, key string, err error) error {
	return fmt.Errorf("rendezvous store at %s: %s %.64q: %w", c.addr, op, key, err)
}

// checkKeyValue checks key and, unless it is nil, value.
func checkKeyValue(key string, value []byte) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if len(value) > MaxValueSize {
		return valueTooLarge(key, len(value))
	}
	return nil
}
