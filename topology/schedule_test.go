package topology

import (
	"fmt"
	"testing"
)

// checkSchedule verifies the properties the probe relies on: pairs in a
// round are disjoint (no rank talks to two peers at once), and every pair
// of ranks meets exactly once.
func checkSchedule(t *testing.T, n int, rounds [][][2]int) {
	t.Helper()
	met := map[[2]int]int{}
	for r, round := range rounds {
		busy := map[int]bool{}
		for _, p := range round {
			a, b := p[0], p[1]
			if a < 0 || b >= n || a >= b {
				t.Fatalf("n=%d round %d: bad pair %v (want 0 <= a < b < n)", n, r, p)
			}
			if busy[a] || busy[b] {
				t.Fatalf("n=%d round %d: %v shares a rank with another pair of %v", n, r, p, round)
			}
			busy[a], busy[b] = true, true
			met[p]++
		}
	}
	for a := range n {
		for b := a + 1; b < n; b++ {
			if c := met[[2]int{a, b}]; c != 1 {
				t.Fatalf("n=%d: pair %d-%d meets %d times, want 1", n, a, b, c)
			}
		}
	}
}

func TestRoundRobin(t *testing.T) {
	for n := -1; n <= 33; n++ {
		rounds := RoundRobin(n)
		checkSchedule(t, n, rounds)
		want := 0 // rounds
		switch {
		case n < 2:
		case n%2 == 0:
			want = n - 1
		default:
			want = n
		}
		if len(rounds) != want {
			t.Errorf("n=%d: %d rounds, want %d", n, len(rounds), want)
		}
		for r, round := range rounds {
			if len(round) != n/2 { // odd n: one rank has a bye each round
				t.Errorf("n=%d round %d: %d pairs, want %d", n, r, len(round), n/2)
			}
		}
	}
}

func TestRoundRobinByes(t *testing.T) {
	// With odd n every rank sits out exactly one round.
	for _, n := range []int{3, 5, 7, 9} {
		byes := make([]int, n)
		for _, round := range RoundRobin(n) {
			for rank := range n {
				if partner(round, rank) < 0 {
					byes[rank]++
				}
			}
		}
		for rank, b := range byes {
			if b != 1 {
				t.Errorf("n=%d: rank %d has %d byes, want 1", n, rank, b)
			}
		}
	}
}

func TestRoundRobinGolden(t *testing.T) {
	// The exact schedule for 4 and 5 ranks, so that a change to it is seen.
	for n, want := range map[int]string{
		4: "[[[0 3] [1 2]] [[0 2] [1 3]] [[0 1] [2 3]]]",
		5: "[[[1 4] [2 3]] [[0 4] [1 2]] [[0 3] [2 4]] [[0 2] [1 3]] [[0 1] [3 4]]]",
	} {
		if got := fmt.Sprint(RoundRobin(n)); got != want {
			t.Errorf("RoundRobin(%d) = %s, want %s", n, got, want)
		}
	}
}
