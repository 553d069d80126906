package shm_test

import (
	"testing"

	"github.com/ringo-ml/ringo/collective/collectivetest"
	"github.com/ringo-ml/ringo/collective/transport/shm"
)

// Reducing straight out of the ring gives the bits that copying first
// gives, for every dtype's width, with the operand order of each
// algorithm, at sizes that end mid-slot and that stream through small
// rings; and it is what runs over shared memory.
func TestReduceInPlaceMatchesCopy(t *testing.T) {
	const n = 3 // odd: the partial sum arrives as the left and the right operand
	tts, errs := joinAll(t, n, func(_ int, c *shm.Config) { smallRings(c) })
	defer closeAll(tts)
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	collectivetest.CheckInPlace(t, "shared memory", tts, 64<<10)
}
