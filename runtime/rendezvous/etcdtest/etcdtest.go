// Package etcdtest starts a real, single-member etcd server inside a test,
// for the etcd rendezvous store's tests and for tests elsewhere (the
// launcher's) that need one. It is test support, not API.
package etcdtest

import (
	"net"
	"net/url"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Start starts etcd listening on host (default "127.0.0.1"; another
// address when the test runs hosts in network namespaces) with ports the
// kernel picks and its data in a temporary directory, and returns its
// client endpoint (host:port). The server stops when the test ends.
func Start(t testing.TB, host string) (endpoint string) {
	t.Helper()
	if host == "" {
		host = "127.0.0.1"
	}
	cfg := embed.NewConfig()
	cfg.Name = "etcdtest"
	cfg.Dir = t.TempDir()
	// Port 0 everywhere: a single member never dials its own peer URL,
	// so the advertised ":0" does no harm, and nothing races for ports.
	u := url.URL{Scheme: "http", Host: net.JoinHostPort(host, "0")}
	cfg.ListenClientUrls = []url.URL{u}
	cfg.AdvertiseClientUrls = []url.URL{u}
	cfg.ListenPeerUrls = []url.URL{u}
	cfg.AdvertisePeerUrls = []url.URL{u}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	// Tests do not survive power loss; skipping fsync makes writes fast.
	cfg.UnsafeNoFsync = true
	// Room for the store's largest value.
	cfg.MaxRequestBytes = 32 << 20

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("etcdtest: starting etcd on %s: %v", host, err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		t.Fatalf("etcdtest: etcd on %s failed: %v", host, err)
	case <-time.After(30 * time.Second):
		e.Server.Stop()
		t.Fatalf("etcdtest: etcd on %s not ready after 30s", host)
	}
	return e.Clients[0].Addr().String()
}
