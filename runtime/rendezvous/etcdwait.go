package rendezvous

import (
	"context"
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// errRereadAfterCompaction: the watch's start revision was compacted
// away, so events may be lost; the waiter reads the key again.
var errRereadAfterCompaction = errors.New("watch revision compacted")

func (e *Etcd) Wait(ctx context.Context, keys ...string) ([][]byte, error) {
	const op = "wait for"
	if len(keys) == 0 {
		return nil, nil
	}
	for _, k := range keys[1:] {
		if err := checkKey(k); err != nil {
			return nil, e.fail(op, k, err)
		}
	}
	cctx, done, err := e.begin(ctx, op, keys[0])
	if err != nil {
		return nil, err
	}
	defer done()
	for {
		// Read every key at one revision, so the values returned all
		// existed together, as the embedded store's do.
		vals := make([][]byte, len(keys))
		var rev int64
		missing := -1
		for i, k := range keys {
			var opts []clientv3.OpOption
			if rev != 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			v, _, storeRev, err := e.read(ctx, cctx, op, k, opts...)
			if err != nil {
				return nil, err
			}
			if rev == 0 {
				rev = storeRev
			}
			if v == nil {
				missing = i
				break
			}
			vals[i] = v
		}
		if missing < 0 {
			return vals, nil
		}
		// Watch from just after the read, so a put between the read
		// and the watch's start is still seen.
		key := keys[missing]
		err := e.watch(ctx, cctx, op, key, rev+1, func(ev *clientv3.Event) (bool, error) {
			return ev.Type == clientv3.EventTypePut, nil
		})
		if err != nil && !errors.Is(err, errRereadAfterCompaction) {
			return nil, err
		}
	}
}

func (e *Etcd) WaitChange(ctx context.Context, key string, old []byte) ([]byte, error) {
	const op = "wait for a change of"
	cctx, done, err := e.begin(ctx, op, key, old)
	if err != nil {
		return nil, err
	}
	defer done()
	for {
		cur, _, rev, err := e.read(ctx, cctx, op, key)
		if err != nil {
			return nil, err
		}
		if differs(cur, old) {
			return cur, nil
		}
		var got []byte
		err = e.watch(ctx, cctx, op, key, rev+1, func(ev *clientv3.Event) (bool, error) {
			var v []byte // a delete: the key is missing
			if ev.Type == clientv3.EventTypePut {
				var err error
				if v, err = e.open(op, key, ev.Kv.Value); err != nil {
					return false, err
				}
			}
			got = v
			return differs(v, old), nil
		})
		if err == nil {
			return got, nil
		}
		if !errors.Is(err, errRereadAfterCompaction) {
			return nil, err
		}
	}
}

// watch watches key from revision rev until match says an event is the
// one, or fails.
func (e *Etcd) watch(ctx, cctx context.Context, op, key string, rev int64, match func(*clientv3.Event) (bool, error)) error {
	wctx, cancel := context.WithCancel(cctx)
	defer cancel() // ends the watch when we are done with it
	for resp := range e.cli.Watch(wctx, e.prefix+key, clientv3.WithRev(rev)) {
		if err := resp.Err(); err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) {
				return errRereadAfterCompaction
			}
			return e.etcdErr(ctx, op, key, err)
		}
		for _, ev := range resp.Events {
			ok, err := match(ev)
			if err != nil || ok {
				return err
			}
		}
	}
	// The channel closes when wctx ends or the client closes.
	return e.etcdErr(ctx, op, key, errors.New("watch ended"))
}
