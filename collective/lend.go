package collective

import "time"

// Lent sends. Where the transport can lend (transport.Lender: shared
// memory, for a work buffer in an shm.Window) and the schedule marked a
// send lendable (builder.sendLent), the send hands the peer a reference
// and is done at once; the peer reads the bytes in this process's memory
// when its schedule gets to them. So this rank must not change those
// bytes before the peer has read them: a receive over them waits first
// (xfer.fence), and so does the end of the call, since the caller owns
// the buffer again once the call returns. Calls below Config.LendBytes
// copy instead.

// Lends says whether a call of bytes on c lends its buffer, where the
// buffer lies in an shm.Window: c's transport can lend to some peer
// (ranks on this host that share memory with it) and bytes is at least
// c's Config.LendBytes. It is whether allocating such a buffer in a
// window pays.
func Lends(c Comm, bytes int) bool {
	g, ok := c.(*group)
	return ok && g.lender != nil && bytes >= g.cfg.LendBytes
}

// loans is the bookkeeping of one call's lent sends: the transport's
// ticket for each send-lane position (0: copied, nothing to wait for),
// and how many positions have been waited for.
type loans struct {
	s       *schedule
	on      bool // the call lends: s has lendable sends, and its size is LendBytes or more
	tickets []uint64
	done    int32
}

// start readies the bookkeeping for s, a call over bytes of g.
func (l *loans) start(g *group, s *schedule, bytes int) {
	l.s, l.done = s, 0
	l.on = s.lends > 0 && g.lender != nil && bytes >= g.cfg.LendBytes
	if !l.on {
		return
	}
	if cap(l.tickets) < len(s.sends) {
		l.tickets = make([]uint64, len(s.sends))
	}
	l.tickets = l.tickets[:len(s.sends)]
	clear(l.tickets)
}

// sendXfer sends x, send-lane position i, with g.sendHdr: lent where x
// allows it and the transport can.
func (g *group) sendXfer(i int, x *xfer, work []byte, deadline time.Time) error {
	p := work[x.off : x.off+x.n]
	if !x.lend || !g.loans.on {
		return g.tr.Send(x.peer, &g.sendHdr, p, deadline)
	}
	t, err := g.lender.SendLent(x.peer, &g.sendHdr, p, deadline)
	g.loans.tickets[i] = t
	return err
}

// awaitLoans waits until the peers have read every lent send up to
// send-lane position upto (exclusive). Receives call it, after the
// sends up to there are done; so does the end of the call.
func (g *group) awaitLoans(upto int32, deadline time.Time) error {
	l := &g.loans
	if !l.on {
		return nil
	}
	for ; l.done < upto; l.done++ {
		if t := l.tickets[l.done]; t != 0 {
			if err := g.lender.AwaitLent(l.s.ops[l.s.sends[l.done]].peer, t, deadline); err != nil {
				return err
			}
		}
	}
	return nil
}
