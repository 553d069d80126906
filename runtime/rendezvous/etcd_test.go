package rendezvous

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ringo-ml/ringo/internal/auth"
	"github.com/ringo-ml/ringo/internal/proctest"
	"github.com/ringo-ml/ringo/runtime/rendezvous/etcdtest"
)

func openEtcd(t *testing.T, endpoint, prefix string, token auth.Token) *Etcd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e, err := NewEtcd(ctx, EtcdConfig{Endpoints: []string{endpoint}, Prefix: prefix, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// etcdOpener gives each test its own prefix in one etcd.
func etcdOpener(endpoint string, token auth.Token) func(t *testing.T) Store {
	return func(t *testing.T) Store {
		return openEtcd(t, endpoint, "/test/"+t.Name()+"/", token)
	}
}

func TestEtcdSuite(t *testing.T) {
	runStoreSuite(t, etcdOpener(etcdtest.Start(t, ""), auth.NewToken()))
}

func TestEtcdSuiteNoToken(t *testing.T) {
	runStoreSuite(t, etcdOpener(etcdtest.Start(t, ""), nil))
}

func rawEtcd(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func TestEtcdSealing(t *testing.T) {
	ep := etcdtest.Start(t, "")
	const prefix = "/job/"
	tok := auth.NewToken()
	right := openEtcd(t, ep, prefix, tok)
	wrong := openEtcd(t, ep, prefix, auth.NewToken())
	plain := openEtcd(t, ep, prefix, nil)
	raw := rawEtcd(t, ep)
	ctx := ctxFor(t)

	const secret = "10.1.2.3:29500 master"
	mustSet(t, right, "master", secret)
	if _, err := right.Add(ctx, "count", 2); err != nil {
		t.Fatal(err)
	}
	// What etcd holds is not the value.
	r, err := raw.Get(ctx, prefix+"master")
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("raw get: %v", err)
	}
	if bytes.Contains(r.Kvs[0].Value, []byte(secret)) {
		t.Fatalf("etcd holds the value in the clear: %q", r.Kvs[0].Value)
	}
	sealed := r.Kvs[0].Value

	// Another token opens nothing and changes nothing.
	wantAuth := func(what, key string, err error) {
		t.Helper()
		if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), ep) {
			t.Fatalf("%s: %v, want ErrAuth naming %q and %s", what, err, key, ep)
		}
	}
	_, err = wrong.Get(ctx, "master")
	wantAuth("get with the wrong token", "master", err)
	_, err = wrong.Wait(ctx, "master")
	wantAuth("wait with the wrong token", "master", err)
	_, err = wrong.WaitChange(ctx, "master", nil)
	wantAuth("wait change with the wrong token", "master", err)
	_, err = wrong.Add(ctx, "count", 1)
	wantAuth("add with the wrong token", "count", err)
	_, _, err = wrong.CompareAndSwap(ctx, "master", []byte(secret), []byte("evil"))
	wantAuth("cas with the wrong token", "master", err)
	_, err = plain.Get(ctx, "count")
	if err != nil {
		t.Fatal(err) // tokenless reads the sealed bytes, which is all it can do
	}
	// A value written around the store is refused.
	if _, err := raw.Put(ctx, prefix+"injected", "10.6.6.6:1 evil"); err != nil {
		t.Fatal(err)
	}
	_, err = right.Get(ctx, "injected")
	wantAuth("get of a raw value", "injected", err)
	_, err = right.Add(ctx, "injected", 1)
	wantAuth("add to a raw value", "injected", err)
	mustSet(t, plain, "plainly", "x")
	_, err = right.Get(ctx, "plainly")
	wantAuth("get of a tokenless store's value", "plainly", err)
	// A sealed value moved to another key does not open there.
	if _, err := raw.Put(ctx, prefix+"moved", string(sealed)); err != nil {
		t.Fatal(err)
	}
	_, err = right.Get(ctx, "moved")
	wantAuth("get of a value moved between keys", "moved", err)
	// A raw write during a WaitChange ends it with ErrAuth, not a hang
	// or a forged value.
	w := async(func() ([][]byte, error) {
		v, err := right.WaitChange(ctxFor(t), "master", []byte(secret))
		return [][]byte{v}, err
	})
	stillBlocked(t, w, "wait change")
	if _, err := raw.Put(ctx, prefix+"master", "forged"); err != nil {
		t.Fatal(err)
	}
	res := await(t, w, "wait change over a forged value")
	wantAuth("wait change over a forged value", "master", res.err)

	// The right token still reads and counts.
	if n, err := right.Add(ctx, "count", 1); err != nil || n != 3 {
		t.Fatalf("add = %d, %v; want 3", n, err)
	}
}

func TestEtcdUnreachable(t *testing.T) {
	addr := proctest.FreeAddr(t)
	start := time.Now()
	_, err := NewEtcd(context.Background(), EtcdConfig{Endpoints: []string{addr}, DialTimeout: 500 * time.Millisecond})
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("etcd at nothing: %v", err)
	}
	if took > 3*time.Second {
		t.Fatalf("refused after %v with a 500ms dial timeout", took)
	}
	// The caller's ctx bounds it too, and says so.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = NewEtcd(ctx, EtcdConfig{Endpoints: []string{addr}, DialTimeout: time.Minute})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), addr) {
		t.Fatalf("etcd at nothing, ctx deadline: %v", err)
	}
}

func TestEtcdConfigValidate(t *testing.T) {
	for _, cfg := range []EtcdConfig{
		{},
		{Endpoints: []string{" "}},
		{Endpoints: []string{"x:1"}, DialTimeout: -1},
	} {
		if err := cfg.Validate(); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
	if err := (EtcdConfig{Endpoints: []string{"x:1"}}).Validate(); err != nil {
		t.Error(err)
	}
}
