package collective

import (
	"math/rand/v2"
	"testing"
)

// Pieces that end in the middle of an element (which the shared-memory
// transport never hands over, but a transport might) reduce to the same
// bits as the whole message at once.
func TestInPlaceReducePieces(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, dt := range DTypes {
		for _, recvFirst := range []bool{false, true} {
			n := 1001 * dt.Size()
			w, in := make([]byte, n), make([]byte, n)
			for i := range w {
				w[i], in[i] = byte(rng.Uint32()&0x3f), byte(rng.Uint32()&0x3f)
			}
			want := append([]byte(nil), w...)
			combineOrdered(recvFirst, dt, Sum, want, in)
			p := inPlaceReduce{w: w, dt: dt, op: Sum, recvFirst: recvFirst, es: dt.Size()}
			for off := 0; off < n; {
				k := min(n-off, 1+rng.IntN(13))
				p.reduce(off, in[off:off+k])
				off += k
			}
			if p.held != 0 || string(w) != string(want) {
				t.Fatalf("%v, recvFirst %v: pieces of 1-13 bytes reduce to other bits than the whole (%d bytes held)", dt, recvFirst, p.held)
			}
		}
	}
}
