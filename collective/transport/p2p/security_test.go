package p2p_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/collectivetest"
	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/collective/transport/p2p"
)

// outsider starts a libp2p host that is not a rank of any group: TCP and
// Noise, like the ranks, so that only its identity sets it apart.
func outsider(t *testing.T, key crypto.PrivKey) host.Host {
	t.Helper()
	if key == nil {
		var err error
		if key, err = p2p.NewIdentity(); err != nil {
			t.Fatal(err)
		}
	}
	h, err := libp2p.New(libp2p.Identity(key), libp2p.NoListenAddrs, libp2p.NoTransports,
		libp2p.Transport(tcp.NewTCPTransport), libp2p.Security(noise.ID, noise.New),
		libp2p.DisableRelay(), libp2p.DisableMetrics(), libp2p.Ping(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// addrInfo is where rank r of tts listens, as another rank sees it.
func addrInfo(t *testing.T, tts []*p2p.Transport, r int) peer.AddrInfo {
	t.Helper()
	a, err := ma.NewMultiaddr(tts[(r+1)%len(tts)].PeerAddr(r))
	if err != nil {
		t.Fatal(err)
	}
	info, err := peer.AddrInfoFromP2pAddr(a)
	if err != nil {
		t.Fatal(err)
	}
	return *info
}

// forgedHello is the hello a rank writes on a collective stream.
func forgedHello(nonce uint64, from, kind int) []byte {
	return transport.Hello{Nonce: nonce, From: from, Index: kind}.Encode()
}

// checkWorks runs an all-reduce on the group's transports and checks the
// sum: the group is intact.
func checkWorks(t *testing.T, tts []*p2p.Transport) {
	t.Helper()
	n := len(tts)
	trs := make([]transport.Transport, n)
	for r, tt := range tts {
		trs[r] = tt
	}
	cfg := collective.DefaultConfig()
	cfg.Timeout = 10 * time.Second
	g := collectivetest.Form(t, cfg, trs, func(r int) { tts[r].Kill() })
	bufs := make([][]float32, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for r, c := range g.Comms {
		bufs[r] = make([]float32, 1000)
		for i := range bufs[r] {
			bufs[r][i] = float32(r + 1)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			errs[r] = c.AllReduce(ctx, collective.Float32s(bufs[r]), collective.Float32s(bufs[r]), collective.Sum)
		}()
	}
	wg.Wait()
	want := float32(n * (n + 1) / 2)
	for r := range n {
		if errs[r] != nil {
			t.Fatalf("rank %d: AllReduce: %v", r, errs[r])
		}
		if bufs[r][0] != want || bufs[r][999] != want {
			t.Fatalf("rank %d: AllReduce gave %v, want %v", r, bufs[r][0], want)
		}
	}
}

// A host whose peer ID is not on the allowlist cannot connect to any rank,
// so it can open no stream and inject nothing; the group does not notice.
// The same host with an allowlisted key gets through, which shows that it
// was its identity that kept it out.
func TestStrangerRefused(t *testing.T) {
	told := make(chan string, 64)
	j, tts := mustJoin(t, 3, func(r int, c *p2p.Config) {
		c.OnRefuse = func(id peer.ID, remote string) { told <- fmt.Sprintf("rank %d refused %s from %s", r, id, remote) }
	})
	stranger := outsider(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for r := range 3 {
		info := addrInfo(t, tts, r)
		before := p2p.Refused(tts[r])
		// The dialer's half of the handshake may complete before rank r
		// has checked who it is; what matters is that the connection goes
		// and no stream can be opened on it.
		stranger.Connect(ctx, info)
		if s, err := stranger.NewStream(ctx, info.ID, p2p.ProtocolCollective); err == nil {
			s.Write(forgedHello(0, 2, 1))
			s.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := s.Read(make([]byte, 1)); err == nil || isTimeout(err) {
				t.Fatalf("a stranger opened a stream to rank %d (read: %v)", r, err)
			}
			s.Reset()
		}
		for end := time.Now().Add(2 * time.Second); stranger.Network().Connectedness(info.ID) == network.Connected; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("a stranger still holds a connection to rank %d", r)
			}
		}
		if p2p.Refused(tts[r]) == before {
			t.Fatalf("rank %d's allowlist refused no connection", r)
		}
		select {
		case m := <-told:
			if !strings.Contains(m, stranger.ID().String()) || !strings.Contains(m, "/tcp/") {
				t.Errorf("OnRefuse said %q, want the stranger's peer ID %s and its address", m, stranger.ID())
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("rank %d's OnRefuse was not told of the stranger", r)
		}
	}
	for r, tt := range tts {
		if f := tt.Fault(); f != nil {
			t.Fatalf("rank %d recorded a fault after the stranger's attempts: %v", r, f)
		}
	}
	checkWorks(t, tts)

	// Control: a host with rank 2's allowlisted key is let in (its
	// connection to rank 0 is allowed; it could only impersonate rank 2).
	impostor := outsider(t, j.keys[2])
	if err := impostor.Connect(ctx, addrInfo(t, tts, 0)); err != nil {
		t.Fatalf("a host with an allowlisted key could not connect: %v", err)
	}
}

// A peer on the allowlist that is not a rank (a spare, say) cannot take a
// pinned rank's place at the rendezvous, and cannot inject a stream into
// the mesh by claiming to be a rank: its hello is refused, since the
// connection proves which peer it is.
func TestAllowlistedOutsiderCannotInject(t *testing.T) {
	const n = 3
	j := newJob(t, n)
	spareKey, err := p2p.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	spareID, _ := p2p.PeerID(spareKey)
	spare := outsider(t, spareKey)
	allow := append(append([]peer.ID{}, j.ids...), spareID)
	tune := func(r int, c *p2p.Config) { c.Allow, c.Peers = allow, j.ids }

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rvAddr, _ := ma.NewMultiaddr(j.rendezvous)
	rv, _ := peer.AddrInfoFromP2pAddr(rvAddr)

	// Rank 0 joins first; the spare registers as rank 1 before rank 1 does.
	tts, errs := make([]*p2p.Transport, n), make([]error, n)
	t.Cleanup(func() { closeAll(tts) })
	var wg sync.WaitGroup
	join := func(r int) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := j.config(r)
			tune(r, &c)
			tts[r], errs[r] = p2p.Join(ctx, c)
		}()
	}
	join(0)
	// Wait for rank 0's listener with plain TCP: a failed libp2p dial
	// would make the spare's host back off for seconds.
	hostPort, _ := manet.ToNetAddr(rv.Addrs[0])
	for {
		c, err := net.Dial("tcp", hostPort.String())
		if err == nil {
			c.Close()
			break
		}
		if ctx.Err() != nil {
			t.Fatal("rank 0 never listened")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := spare.Connect(ctx, *rv); err != nil {
		t.Fatal(err)
	}
	s, err := spare.NewStream(ctx, rv.ID, p2p.ProtocolBootstrap)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(s, `{"v":%d,"rank":1,"size":%d,"offers":{"libp2p":{"id":"x","addrs":["/ip4/127.0.0.1/tcp/1"]}}}`+"\n", transport.BootstrapVersion, n)
	answer, _ := bufio.NewReader(s).ReadString('\n')
	s.Close()
	if !strings.Contains(answer, `"error"`) || strings.Contains(answer, `"members"`) {
		t.Fatalf("the spare registering as rank 1 got %q; want an error and no table", answer)
	}

	// While the others join, the spare keeps opening collective streams
	// to rank 0 claiming to be rank 1 or 2.
	stop := make(chan struct{})
	var injected sync.WaitGroup
	injected.Add(1)
	attempts := 0
	go func() {
		defer injected.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			attempts++
			s, err := spare.NewStream(ctx, rv.ID, p2p.ProtocolCollective)
			if err != nil {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			s.Write(forgedHello(0, 1+attempts%2, attempts%2))
			h := transport.Header{Kind: transport.KindData, Seq: 1}
			b := make([]byte, transport.HeaderSize)
			h.Encode(b)
			s.Write(b)
			s.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := io.ReadFull(s, make([]byte, 1)); err == nil {
				t.Errorf("rank 0 wrote to a stream from the spare")
			}
			s.Reset()
		}
	}()
	join(1)
	join(2)
	wg.Wait()
	close(stop)
	injected.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d failed beside an allowlisted outsider: %v", r, err)
		}
	}
	if attempts == 0 {
		t.Fatal("the spare made no attempt")
	}
	// After the group formed, the streams it opens are refused too.
	for kind := range 2 {
		s, err := spare.NewStream(ctx, rv.ID, p2p.ProtocolCollective)
		if err != nil {
			continue
		}
		s.Write(forgedHello(0, 1, kind))
		s.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := s.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
			t.Fatalf("rank 0 kept a stream from the spare open after forming its group (read: %v)", err)
		}
	}
	for r, tt := range tts {
		if f := tt.Fault(); f != nil {
			t.Fatalf("rank %d recorded a fault: %v", r, f)
		}
	}
	checkWorks(t, tts)
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// Without pins, one identity registered as two ranks fails the group
// with a message that says so.
func TestSharedIdentityRefused(t *testing.T) {
	j := newJob(t, 3)
	_, errs := j.joinAll(t, 10*time.Second, func(r int, c *p2p.Config) {
		if r == 2 {
			c.Identity = j.keys[1]
		}
	})
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "identity of its own") {
		t.Fatalf("rank 0: %v; want a refusal naming the shared identity", errs[0])
	}
	for r := 1; r < 3; r++ {
		if errs[r] == nil {
			t.Fatalf("rank %d joined a group in which two ranks share an identity", r)
		}
	}
}

// A rank that rank 0's allowlist does not name cannot register; its error
// says where to look.
func TestRankNotAllowlisted(t *testing.T) {
	j := newJob(t, 2)
	_, errs := j.joinAll(t, 2*time.Second, func(r int, c *p2p.Config) {
		if r == 0 {
			c.Allow = j.ids[:1]
		}
	})
	if errs[1] == nil || !strings.Contains(errs[1].Error(), "allowlist") || !strings.Contains(errs[1].Error(), j.ids[1].String()) {
		t.Fatalf("rank 1: %v; want an error that names its peer ID and the allowlist", errs[1])
	}
	if errs[0] == nil {
		t.Fatal("rank 0 formed a group with a rank it does not allow")
	}
}

// Ranks that disagree about the security protocol share none, so they
// cannot connect.
func TestSecurityMismatch(t *testing.T) {
	j := newJob(t, 2)
	_, errs := j.joinAll(t, 2*time.Second, func(r int, c *p2p.Config) {
		if r == 1 {
			c.Security = p2p.SecurityTLS
		}
	})
	if errs[0] == nil || errs[1] == nil {
		t.Fatalf("a Noise rank and a TLS rank formed a group: %v, %v", errs[0], errs[1])
	}
}

// TLS instead of Noise: a group of three forms and computes.
func TestTLS(t *testing.T) {
	_, tts := mustJoin(t, 3, func(r int, c *p2p.Config) { c.Security = p2p.SecurityTLS })
	checkWorks(t, tts)
}

// The connections between ranks use the security protocol configured:
// Noise by default, TLS when asked.
func TestSecurityProtocol(t *testing.T) {
	for _, c := range []struct{ name, want string }{{p2p.SecurityNoise, "/noise"}, {p2p.SecurityTLS, "/tls/1.0.0"}} {
		t.Run(c.name, func(t *testing.T) {
			_, tts := mustJoin(t, 2, func(r int, cfg *p2p.Config) { cfg.Security = c.name })
			for r, tt := range tts {
				if got := tt.ConnSecurity(1 - r); string(got) != c.want {
					t.Errorf("rank %d: security protocol with rank %d is %q, want %q", r, 1-r, got, c.want)
				}
			}
		})
	}
}
