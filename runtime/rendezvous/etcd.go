package rendezvous

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ringo-ml/ringo/internal/auth"
)

// EtcdConfig says where the etcd store lives and how to reach it.
type EtcdConfig struct {
	// Endpoints are the etcd client URLs or host:port pairs.
	Endpoints []string
	// Prefix is put before every key, so jobs can share one etcd. Empty
	// means DefaultEtcdConfig's.
	Prefix string
	// Token, when set, seals every value with AES-256-GCM under a key
	// derived from it (etcd cannot run our handshake); values that do
	// not open are refused with ErrAuth.
	Token auth.Token
	// DialTimeout bounds connecting and the first request; zero means
	// DefaultEtcdConfig's.
	DialTimeout time.Duration
	// TLS, if set, is used to talk to etcd.
	TLS *tls.Config
}

// DefaultEtcdConfig returns the defaults that NewEtcd fills in for zero
// fields; Endpoints must still be set.
func DefaultEtcdConfig() EtcdConfig {
	return EtcdConfig{Prefix: "/ringo/rdzv/", DialTimeout: 5 * time.Second}
}

// Validate reports what is wrong with cfg, if anything.
func (cfg EtcdConfig) Validate() error {
	if len(cfg.Endpoints) == 0 {
		return errors.New("etcd store: no endpoints given")
	}
	for _, e := range cfg.Endpoints {
		if strings.TrimSpace(e) == "" {
			return fmt.Errorf("etcd store: empty endpoint in %q", cfg.Endpoints)
		}
	}
	if cfg.DialTimeout < 0 {
		return fmt.Errorf("etcd store: negative dial timeout %v", cfg.DialTimeout)
	}
	return nil
}

// Etcd is a Store kept in etcd, for jobs that already run one or whose
// node 0 may be replaced. It is safe for concurrent use.
type Etcd struct {
	cli       *clientv3.Client
	prefix    string
	seal      *sealer
	endpoints string // for errors

	// closeCtx ends at Close; every call's context ends with it.
	closeCtx    context.Context
	closeCancel context.CancelFunc
	closeOnce   sync.Once
}

var _ Store = (*Etcd)(nil)

// NewEtcd connects to etcd and checks, within ctx and cfg.DialTimeout,
// that it answers: etcd's client would otherwise retry an unreachable
// endpoint forever, one request at a time.
func NewEtcd(ctx context.Context, cfg EtcdConfig) (*Etcd, error) {
	def := DefaultEtcdConfig()
	if cfg.Prefix == "" {
		cfg.Prefix = def.Prefix
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = def.DialTimeout
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	seal, err := newSealer(cfg.Token)
	if err != nil {
		return nil, fmt.Errorf("etcd store: deriving the value key: %w", err)
	}
	e := &Etcd{prefix: cfg.Prefix, seal: seal, endpoints: strings.Join(cfg.Endpoints, ",")}
	e.cli, err = clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		TLS:         cfg.TLS,
		Logger:      zap.NewNop(), // errors reach the caller; its retries are noise
		// Room for a MaxValueSize value after sealing; etcd's own
		// --max-request-bytes (1.5 MiB by default) may still refuse it.
		MaxCallSendMsgSize: MaxValueSize + 1<<20,
		MaxCallRecvMsgSize: maxFrame,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd store at %s: %w", e.endpoints, err)
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	// A linearizable read needs a leader, so this proves the cluster
	// serves, not just that a socket opened.
	if _, err := e.cli.Get(pctx, e.prefix, clientv3.WithCountOnly()); err != nil {
		e.cli.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("etcd store at %s: %w", e.endpoints, ctx.Err())
		}
		return nil, fmt.Errorf("etcd store at %s unreachable within %v: %w", e.endpoints, cfg.DialTimeout, err)
	}
	e.closeCtx, e.closeCancel = context.WithCancel(context.Background())
	return e, nil
}

// Close closes the etcd client. Calls blocked in it, and calls after it,
// return an error wrapping ErrClosed.
func (e *Etcd) Close() error {
	var err error
	e.closeOnce.Do(func() {
		e.closeCancel()
		err = e.cli.Close()
	})
	return err
}

// begin checks arguments and returns a context that also ends at Close.
func (e *Etcd) begin(ctx context.Context, op, key string, values ...[]byte) (context.Context, func(), error) {
	err := checkKey(key)
	for _, v := range values {
		if err == nil && len(v) > MaxValueSize {
			err = valueTooLarge(key, len(v))
		}
	}
	if err == nil && e.closeCtx.Err() != nil {
		err = ErrClosed
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return nil, nil, e.fail(op, key, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(e.closeCtx, cancel)
	return cctx, func() { stop(); cancel() }, nil
}

func (e *Etcd) fail(op, key string, err error) error {
	return fmt.Errorf("etcd store at %s: %s %.64q: %w", e.endpoints, op, key, err)
}

// etcdErr explains an error from the etcd client: one caused by Close or
// by the caller's ctx says so, whatever form gRPC gave it.
func (e *Etcd) etcdErr(ctx context.Context, op, key string, err error) error {
	switch {
	case e.closeCtx.Err() != nil:
		err = ErrClosed
	case ctx.Err() != nil:
		err = ctx.Err()
	case errors.Is(err, rpctypes.ErrRequestTooLarge):
		err = fmt.Errorf("%w (etcd refuses requests over its --max-request-bytes, 1.5 MiB by default)", err)
	}
	return e.fail(op, key, err)
}

// open opens a value read from etcd, naming the key if it does not.
func (e *Etcd) open(op, key string, b []byte) ([]byte, error) {
	v, err := e.seal.open(e.prefix+key, b)
	if err != nil {
		return nil, e.fail(op, key, fmt.Errorf("%w: %w (written by another job, or by hand?)", ErrAuth, err))
	}
	return v, nil
}

func (e *Etcd) Set(ctx context.Context, key string, value []byte) error {
	cctx, done, err := e.begin(ctx, "set", key, value)
	if err != nil {
		return err
	}
	defer done()
	full := e.prefix + key
	if _, err := e.cli.Put(cctx, full, string(e.seal.seal(full, value))); err != nil {
		return e.etcdErr(ctx, "set", key, err)
	}
	return nil
}

func (e *Etcd) Get(ctx context.Context, key string) ([]byte, error) {
	cctx, done, err := e.begin(ctx, "get", key)
	if err != nil {
		return nil, err
	}
	defer done()
	resp, err := e.cli.Get(cctx, e.prefix+key)
	if err != nil {
		return nil, e.etcdErr(ctx, "get", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, e.fail("get", key, ErrNotFound)
	}
	return e.open("get", key, resp.Kvs[0].Value)
}

func (e *Etcd) Delete(ctx context.Context, key string) error {
	cctx, done, err := e.begin(ctx, "delete", key)
	if err != nil {
		return err
	}
	defer done()
	if _, err := e.cli.Delete(cctx, e.prefix+key); err != nil {
		return e.etcdErr(ctx, "delete", key, err)
	}
	return nil
}

// read returns key's value (nil: missing), the revision its last write
// made (0: missing) and the store's revision at the read.
func (e *Etcd) read(ctx, cctx context.Context, op, key string, opts ...clientv3.OpOption) (val []byte, modRev, storeRev int64, err error) {
	resp, err := e.cli.Get(cctx, e.prefix+key, opts...)
	if err != nil {
		return nil, 0, 0, e.etcdErr(ctx, op, key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, resp.Header.Revision, nil
	}
	kv := resp.Kvs[0]
	val, err = e.open(op, key, kv.Value)
	return val, kv.ModRevision, resp.Header.Revision, err
}

// putIfUnchanged writes value to key if key's last write is still the one
// at modRev (0: if key is still missing). Comparing revisions rather than
// values is what makes this correct with sealing, where one plaintext
// seals to different bytes each time; and it is what a compare of values
// means anyway, once the values were compared after opening.
func (e *Etcd) putIfUnchanged(ctx, cctx context.Context, op, key string, modRev int64, value []byte) (bool, error) {
	full := e.prefix + key
	cmp := clientv3.Compare(clientv3.ModRevision(full), "=", modRev)
	if modRev == 0 {
		cmp = clientv3.Compare(clientv3.CreateRevision(full), "=", 0)
	}
	resp, err := e.cli.Txn(cctx).If(cmp).Then(clientv3.OpPut(full, string(e.seal.seal(full, value)))).Commit()
	if err != nil {
		return false, e.etcdErr(ctx, op, key, err)
	}
	return resp.Succeeded, nil
}

func (e *Etcd) CompareAndSwap(ctx context.Context, key string, old, new []byte) ([]byte, bool, error) {
	const op = "compare-and-swap"
	cctx, done, err := e.begin(ctx, op, key, old, new)
	if err != nil {
		return nil, false, err
	}
	defer done()
	if new == nil {
		new = []byte{}
	}
	// Read, compare the opened value, then write only if nothing wrote
	// the key in between; if something did, compare again.
	for {
		cur, modRev, _, err := e.read(ctx, cctx, op, key)
		if err != nil {
			return nil, false, err
		}
		if differs(cur, old) {
			return cur, false, nil
		}
		ok, err := e.putIfUnchanged(ctx, cctx, op, key, modRev, new)
		if err != nil {
			return nil, false, err
		}
		if ok {
			return new, true, nil
		}
	}
}

func (e *Etcd) Add(ctx context.Context, key string, delta int64) (int64, error) {
	const op = "add to"
	cctx, done, err := e.begin(ctx, op, key)
	if err != nil {
		return 0, err
	}
	defer done()
	for {
		cur, modRev, _, err := e.read(ctx, cctx, op, key)
		if err != nil {
			return 0, err
		}
		n, err := addCounter(key, cur, delta)
		if err != nil {
			return 0, e.fail(op, key, err)
		}
		ok, err := e.putIfUnchanged(ctx, cctx, op, key, modRev, strconv.AppendInt(nil, n, 10))
		if err != nil {
			return 0, err
		}
		if ok {
			return n, nil
		}
	}
}
