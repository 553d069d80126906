package topology

import "sort"

// RoundRobin returns a schedule in which every pair of n ranks meets
// exactly once: a list of rounds, each a list of disjoint pairs {a, b}
// with a < b. It is the circle method of round-robin tournaments: rank 0
// stays put while the others rotate one place per round. With even n
// there are n-1 rounds of n/2 pairs; with odd n an imaginary rank n is
// added, so there are n rounds and whoever would meet it sits the round
// out (a bye).
//
// The probe runs one round at a time so that no rank talks to two peers
// at once: a bandwidth figure then belongs to one link, not to a share
// of a rank's NIC or CPU. n < 2 gives no rounds.
func RoundRobin(n int) [][][2]int {
	if n < 2 {
		return nil
	}
	m := n + n%2 // even: with a bye-rank for odd n
	circle := make([]int, m)
	for i := range circle {
		circle[i] = i
	}
	rounds := make([][][2]int, 0, m-1)
	for range m - 1 {
		round := make([][2]int, 0, m/2)
		for i := range m / 2 {
			a, b := circle[i], circle[m-1-i]
			if a == n || b == n {
				continue // the bye
			}
			if a > b {
				a, b = b, a
			}
			round = append(round, [2]int{a, b})
		}
		// Sorted, so that a printed schedule reads the same every time.
		sort.Slice(round, func(i, j int) bool { return round[i][0] < round[j][0] })
		rounds = append(rounds, round)
		// Rotate everything but position 0 by one place.
		last := circle[m-1]
		copy(circle[2:], circle[1:m-1])
		circle[1] = last
	}
	return rounds
}

// partner is whom rank meets in round, or -1 for a bye.
func partner(round [][2]int, rank int) int {
	for _, p := range round {
		switch rank {
		case p[0]:
			return p[1]
		case p[1]:
			return p[0]
		}
	}
	return -1
}
