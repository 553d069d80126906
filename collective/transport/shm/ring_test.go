package shm

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/internal/proctest"
	"golang.org/x/sys/unix"
)

// putNT writes the same bytes as put, wherever the copy starts in the
// ring and however long it is (whole 64-byte blocks streamed, the rest
// copied), across the ring's end too.
func TestPutNT(t *testing.T) {
	r, fd, err := newSegment(4096, 64, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.unmap()
	defer unix.Close(fd)
	src := make([]byte, 3*4096+77)
	for i := range src {
		src[i] = byte(i*7 + i>>8)
	}
	for _, pos := range []uint64{0, 64, 4096, r.size - 4096, r.size - 64, 3*r.size + 128} {
		for _, n := range []int{0, 1, 63, 64, 65, 4096, 4096 + 17, len(src)} {
			clear(r.data)
			r.putNT(pos, src[:n])
			got := make([]byte, n)
			r.get(pos, got)
			if !bytes.Equal(got, src[:n]) {
				t.Fatalf("putNT at %d of %d bytes: read back differs", pos, n)
			}
		}
	}
}

// With streaming forced on, large messages of awkward lengths arrive
// intact through a small ring, while it wraps.
func TestStreamedMessages(t *testing.T) {
	forceStream = true
	defer func() { forceStream = false }()
	addr := proctest.FreeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	trs := make([]*Transport, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := DefaultConfig()
			c.SlotBytes, c.Slots = 4<<10, 64
			c.Rendezvous, c.Rank, c.Size = addr, r, 2
			trs[r], errs[r] = Join(ctx, c)
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	defer trs[1].Close()
	defer trs[0].Close()
	sizes := []int{ntMin, ntMin + 1, ntMin + 63, 3*ntMin + 4095, 5<<20 + 13}
	msg := func(i, n int) []byte {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(i + j*13 + j>>10)
		}
		return b
	}
	dl := time.Now().Add(20 * time.Second)
	errc := make(chan error, 1)
	go func() {
		for i, n := range sizes {
			if err := trs[0].Send(1, &transport.Header{Kind: transport.KindData, Seq: uint64(i)}, msg(i, n), dl); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for i, n := range sizes {
		var h transport.Header
		if err := trs[1].RecvHeader(0, &h, dl); err != nil || h.Seq != uint64(i) || h.Length != uint64(n) {
			t.Fatalf("message %d: %v %+v", i, err, h)
		}
		got := make([]byte, n)
		if err := trs[1].RecvPayload(0, got, dl); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg(i, n)) {
			t.Fatalf("streamed message %d of %d bytes arrived corrupted", i, n)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
