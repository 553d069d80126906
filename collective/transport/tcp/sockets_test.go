package tcp

import (
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/topology"
)

// A TCP link hands out its data sockets for TCP_INFO, which counts what
// was sent over them; there are none to this rank itself.
func TestSocketsCountWhatWasSent(t *testing.T) {
	tts := joinTwo(t)
	if s := tts[0].Sockets(0); s != nil {
		t.Fatalf("rank 0 has %d sockets to itself", len(s))
	}
	socks := tts[0].Sockets(1)
	if len(socks) != tts[0].SocketsPerPeer() {
		t.Fatalf("%d sockets to rank 1, the link has %d", len(socks), tts[0].SocketsPerPeer())
	}
	payload := make([]byte, 1<<20)
	done := make(chan error, 1)
	go func() {
		var h transport.Header
		if err := tts[1].RecvHeader(0, &h, time.Now().Add(5*time.Second)); err != nil {
			done <- err
			return
		}
		done <- tts[1].RecvPayload(0, make([]byte, h.Length), time.Now().Add(5*time.Second))
	}()
	if err := tts[0].Send(1, &transport.Header{Kind: transport.KindData, Seq: 1}, payload, time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The receiver has the bytes; the sender's count follows once their
	// acknowledgements arrive.
	var acked uint64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		acked = 0
		for _, c := range socks {
			info, err := topology.ReadTCPInfo(c)
			if err != nil {
				t.Fatal(err)
			}
			acked += info.BytesAcked
		}
		if acked >= uint64(len(payload)) || time.Now().After(deadline) {
			break
		}
	}
	if acked < uint64(len(payload)) {
		t.Errorf("TCP_INFO counts %d bytes acknowledged, %d were sent", acked, len(payload))
	}
}
