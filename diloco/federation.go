package diloco

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Board is the part of a key-value store the federated exchange uses. The
// launchers' rendezvous store (ringo's own server, or etcd) is one; any
// store whose CompareAndSwap is atomic and whose writes, once answered,
// are seen by every later read will do.
type Board interface {
	Set(ctx context.Context, key string, value []byte) error
	// Get returns key's value, or an error for which errors.Is(err,
	// Federation.NotFound) holds when the key is missing.
	Get(ctx context.Context, key string) ([]byte, error)
	// Wait blocks until every key exists and returns their values.
	Wait(ctx context.Context, keys ...string) ([][]byte, error)
	// WaitChange blocks until key's value differs from old (nil: missing).
	WaitChange(ctx context.Context, key string, old []byte) ([]byte, error)
	// Add adds delta to the decimal counter in key (missing: 0).
	Add(ctx context.Context, key string, delta int64) (int64, error)
	// CompareAndSwap sets key to new if it holds old (nil: if missing),
	// and returns the value after the call.
	CompareAndSwap(ctx context.Context, key string, old, new []byte) (cur []byte, swapped bool, err error)
	Delete(ctx context.Context, key string) error
}

// Federation joins sites that run as separate jobs, each its own failure
// domain, through a Board that every site reaches. A sync goes ahead with
// the sites that posted their deltas within Config.Deadline, so a site
// that falls behind or is down does not stop the others.
//
// # A sync on the board
//
// For the sync after step s each rank writes its encoded delta under
// <prefix>/sync/<s>/msg/<site>/<place> (a message over 1 MiB in parts
// under it) and adds one to its site's ready counter and to the sync's
// bell. A site is complete when every place has. The first rank to see
// every site complete, or its deadline pass with at least one site
// complete, writes the members (the complete sites, in site order) with a
// compare-and-swap from missing, and rings the bell's upper half;
// whichever proposal lands first is the sync's, for every rank of every
// site, forever. Every rank then reads the members' messages for its
// place, in site order, so every site computes the same average and the
// same outer step, members or not.
//
// A site left out of a sync applies it all the same, so that its
// parameters agree with everyone's, and puts the delta it posted back in
// its error feedback: its work goes with the next sync it makes. A site
// restarted from a checkpoint replays the syncs decided since from the
// board (Outer.CatchUp) and rejoins at the next one.
//
// A site that missed GiveUp syncs in a row is presumed down and no longer
// waited for, so an outage costs the others GiveUp deadlines, not one per
// sync; a site that finds itself left out (late, or back from a restart)
// says so under <prefix>/back/<site>, and is waited for again.
//
// The board keeps each sync for Keep syncs, the window in which a
// restarted site can catch up: each rank deletes its own messages of the
// sync Keep syncs back, and the first member of the sync just decided
// deletes that old sync's members, bell and ready counters, after raising
// <prefix>/pruned to its step. A site that would post to, or replay, a
// sync at or below it is further behind than the board keeps, and says
// so, instead of deciding an old sync afresh or taking missing members
// for the end of the decided ones.
type Federation struct {
	Board Board
	// NotFound is what Board.Get wraps for a missing key.
	NotFound error
	// Prefix namespaces the federation's keys, e.g. "/federation/run-7".
	Prefix string
	// Sites names every site, in the order their deltas are summed; the
	// same list at every site. Site is this rank's index in it.
	Sites []string
	Site  int
	// Keep is how many syncs each rank's messages stay on the board (0:
	// 64).
	Keep int
	// GiveUp is how many syncs in a row a site may miss before the others
	// stop waiting for it, until it says it is back (0: 3).
	GiveUp int
	// Key signs this site's deltas and its proposals of a sync's
	// members, and SiteKeys, one per site in Sites order, check
	// everyone's (sign.go): a delta is then taken only from the site it
	// is posted for, for that sync and place, and members only from a
	// site, not from any holder of the store's token. Both or neither,
	// and the same SiteKeys at every site.
	Key      ed25519.PrivateKey
	SiteKeys []ed25519.PublicKey
}

// partBytes caps one value on the board: etcd's default request limit is
// 1.5 MiB.
const partBytes = 1 << 20

// pollEvery bounds how long a rank waiting for a sync's members sleeps
// between looks, should a wake-up be lost with a store connection.
const pollEvery = 5 * time.Second

func (f *Federation) validate(places int) error {
	switch {
	case f.Board == nil || f.NotFound == nil:
		return errors.New("federation: no board, or no NotFound error to recognise a missing key by")
	case len(f.Sites) < 1 || f.Site < 0 || f.Site >= len(f.Sites):
		return fmt.Errorf("federation: site index %d among %d sites %v", f.Site, len(f.Sites), f.Sites)
	case f.Prefix == "" || strings.ContainsAny(f.Prefix, "\x00\n"):
		return fmt.Errorf("federation: key prefix %q: want a non-empty line", f.Prefix)
	case f.Keep < 0 || f.GiveUp < 0:
		return fmt.Errorf("federation: keep %d syncs, give up after %d: want 0 (the default) or more", f.Keep, f.GiveUp)
	}
	seen := map[string]bool{}
	for _, s := range f.Sites {
		if s == "" || strings.ContainsAny(s, ",\x00\n") || seen[s] {
			return fmt.Errorf("federation: sites %q: want distinct non-empty names without commas", f.Sites)
		}
		seen[s] = true
	}
	return f.validateKeys()
}

// boardExchange is one rank's side of the federation.
type boardExchange struct {
	Federation
	place, places int
	every         int64
	deadline      time.Duration
	missedRun     []int // per site, the syncs it missed in a row, of those applied here
	pruning       sync.WaitGroup
}

func (b *boardExchange) key(step int64, rest ...string) string {
	return b.Prefix + "/sync/" + strconv.FormatInt(step, 10) + "/" + strings.Join(rest, "/")
}

func (b *boardExchange) msgKey(step int64, site, place int) string {
	return b.key(step, "msg", strconv.Itoa(site), strconv.Itoa(place))
}

func (b *boardExchange) missing(err error) bool { return errors.Is(err, b.NotFound) }

// join checks, once per rank, that every site agrees on the site list and
// the number of places: the first rank's values are the federation's.
func (b *boardExchange) join(ctx context.Context) error {
	for _, c := range []struct{ what, key, val string }{
		{"sites", b.Prefix + "/sites", strings.Join(b.Sites, ",")},
		{"ranks per site", b.Prefix + "/places", strconv.Itoa(b.places)},
		{"site keys", b.Prefix + "/site-keys", siteKeysFingerprint(b.SiteKeys)},
	} {
		cur, _, err := b.Board.CompareAndSwap(ctx, c.key, nil, []byte(c.val))
		if err != nil {
			return fmt.Errorf("federation: site %q: registering its %s: %w", b.Sites[b.Site], c.what, err)
		}
		if string(cur) != c.val {
			return fmt.Errorf("federation: site %q has %s %s, the federation %s: every site must list the same sites (and site keys) and have the same number of ranks", b.Sites[b.Site], c.what, c.val, cur)
		}
	}
	return nil
}

// A message's key holds 'm' and the message, or, for one larger than
// partBytes, 'p' and the number of parts stored under key/0, key/1 ...
const (
	inlineTag = 'm'
	partsTag  = 'p'
)

// decidedBell is what the decision adds to a sync's bell, whose low 32
// bits count the ranks that posted: one read tells a waiting rank both.
const decidedBell = 1 << 32

// post puts this rank's message for the sync of step on the board and
// counts it in its site's ready counter and in the sync's bell. A rank
// that posts the same sync again (restarted before it was decided) only
// replaces its message.
func (b *boardExchange) post(ctx context.Context, step int64, msg []byte) error {
	k := b.msgKey(step, b.Site, b.place)
	sig := b.sign(step, msg)
	inline, parted := byte(inlineTag), byte(partsTag)
	if sig != nil {
		inline, parted = signedInlineTag, signedPartsTag
	}
	val := append(append([]byte{inline}, sig...), msg...)
	if len(msg) > partBytes {
		parts := 0
		for off := 0; off < len(msg); off += partBytes {
			if err := b.Board.Set(ctx, k+"/"+strconv.Itoa(parts), msg[off:min(len(msg), off+partBytes)]); err != nil {
				return err
			}
			parts++
		}
		val = append(append([]byte{parted}, sig...), strconv.Itoa(parts)...)
	}
	if _, swapped, err := b.Board.CompareAndSwap(ctx, k, nil, val); err != nil {
		return err
	} else if !swapped {
		return b.Board.Set(ctx, k, val)
	}
	if _, err := b.Board.Add(ctx, b.key(step, "ready", strconv.Itoa(b.Site)), 1); err != nil {
		return err
	}
	_, err := b.Board.Add(ctx, b.key(step, "bell"), 1)
	return err
}

// fetch reads the messages of the members' ranks at this place for the
// sync of step, in their order. In a sync just decided (fresh) they are
// on the board (their ready counts say so) and one Wait reads them all; a
// replay reads them one by one, to say which is gone if one is.
func (b *boardExchange) fetch(ctx context.Context, step int64, members []int, fresh bool) ([][]byte, error) {
	keys := make([]string, len(members))
	for i, s := range members {
		keys[i] = b.msgKey(step, s, b.place)
	}
	var vals [][]byte
	if fresh {
		var err error
		if vals, err = b.Board.Wait(ctx, keys...); err != nil {
			return nil, err
		}
	} else {
		for i, k := range keys {
			v, err := b.Board.Get(ctx, k)
			if b.missing(err) {
				return nil, fmt.Errorf("the delta of site %q (place %d) for the sync of step %d is no longer on the board, which keeps %d syncs: this site is further behind than that; restart it from a newer checkpoint, or give the federation a larger Keep", b.Sites[members[i]], b.place, step, b.keep())
			} else if err != nil {
				return nil, err
			}
			vals = append(vals, v)
		}
	}
	for i, v := range vals {
		what := fmt.Sprintf("the delta of site %q (place %d) for the sync of step %d", b.Sites[members[i]], b.place, step)
		m, err := parseMessage(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		msg := m.inline
		for j := range m.parts {
			p, err := b.Board.Get(ctx, keys[i]+"/"+strconv.Itoa(j))
			if err != nil {
				return nil, fmt.Errorf("%s, part %d of %d: %w", what, j, m.parts, err)
			}
			msg = append(msg, p...)
		}
		if err := b.verify(step, members[i], msg, m.sig); err != nil {
			return nil, err
		}
		vals[i] = msg
	}
	return vals, nil
}

// message is a message's key on the board, parsed: the message itself
// (inline) or the number of its parts, and its signature (nil: none).
type message struct {
	inline []byte
	parts  int
	sig    []byte
}

func parseMessage(v []byte) (message, error) {
	if len(v) == 0 {
		return message{}, errors.New("not a message on the board (empty)")
	}
	var m message
	tag, rest := v[0], v[1:]
	if tag == signedInlineTag || tag == signedPartsTag {
		if len(rest) < ed25519.SignatureSize {
			return m, fmt.Errorf("a signed message of %d bytes, too short for its signature", len(v))
		}
		m.sig, rest = rest[:ed25519.SignatureSize], rest[ed25519.SignatureSize:]
	}
	switch tag {
	case inlineTag, signedInlineTag:
		m.inline = rest
	case partsTag, signedPartsTag:
		parts, err := strconv.Atoi(string(rest))
		if err != nil || parts < 1 {
			return m, fmt.Errorf("part count %q is not a positive number", rest)
		}
		m.parts = parts
	default:
		return m, fmt.Errorf("not a message on the board (%d bytes)", len(v))
	}
	return m, nil
}

func (b *boardExchange) keep() int {
	if b.Keep == 0 {
		return 64
	}
	return b.Keep
}

// prune deletes, in the background, this rank's messages of the sync Keep
// syncs before step, and, on the first member's first rank of the sync
// of step (members), that old sync's shared keys, once the pruned mark
// says so. Errors are ignored: what is left only takes room, and a mark
// that could not be raised keeps the shared keys.
func (b *boardExchange) prune(ctx context.Context, step int64, members []int) {
	old := step - int64(b.keep())*b.every
	if old <= 0 {
		return
	}
	b.pruning.Go(func() {
		k := b.msgKey(old, b.Site, b.place)
		if v, err := b.Board.Get(ctx, k); err == nil { // else gone, or this site was not there for it
			b.Board.Delete(ctx, k)
			m, _ := parseMessage(v)
			for i := range m.parts {
				b.Board.Delete(ctx, k+"/"+strconv.Itoa(i))
			}
		}
		if b.place != 0 || len(members) == 0 || members[0] != b.Site || b.markPruned(ctx, old) != nil {
			return
		}
		b.Board.Delete(ctx, b.key(old, "members"))
		b.Board.Delete(ctx, b.key(old, "bell"))
		for s := range b.Sites {
			b.Board.Delete(ctx, b.key(old, "ready", strconv.Itoa(s)))
		}
	})
}

func (b *boardExchange) prunedKey() string { return b.Prefix + "/pruned" }

// markPruned raises the pruned mark to step; it never lowers it, so that
// a pruner of an older sync that runs late cannot hide a newer one's.
func (b *boardExchange) markPruned(ctx context.Context, step int64) error {
	for {
		cur, err := b.Board.Get(ctx, b.prunedKey())
		if b.missing(err) {
			cur, err = nil, nil
		} else if err != nil {
			return err
		}
		if at, err := strconv.ParseInt(string(cur), 10, 64); err == nil && at >= step {
			return nil
		}
		if _, swapped, err := b.Board.CompareAndSwap(ctx, b.prunedKey(), cur, []byte(strconv.FormatInt(step, 10))); err != nil || swapped {
			return err
		}
	}
}

// pruned returns the last sync whose shared keys may be gone (0: none).
func (b *boardExchange) pruned(ctx context.Context) (int64, error) {
	v, err := b.Board.Get(ctx, b.prunedKey())
	if b.missing(err) {
		return 0, nil
	} else if err != nil {
		return 0, err
	}
	at, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s holds %q, not a step", b.prunedKey(), v)
	}
	return at, nil
}

// tooFarBehind is the error for a sync of step at or below the pruned
// mark at.
func (b *boardExchange) tooFarBehind(step, at int64) error {
	return fmt.Errorf("the sync of step %d is gone from the board, which keeps %d syncs (up to the one of step %d is pruned): site %q is further behind than that; restart it from a newer checkpoint, or give the federation a larger Keep", step, b.keep(), at, b.Sites[b.Site])
}

// members returns the members of the sync of step, if decided.
func (b *boardExchange) members(ctx context.Context, step int64) ([]int, bool, error) {
	v, err := b.Board.Get(ctx, b.key(step, "members"))
	if b.missing(err) {
		return nil, false, nil
	} else if err != nil {
		return nil, false, err
	}
	m, err := b.parseMembers(step, v)
	if err != nil {
		return nil, false, err
	}
	return m, true, nil
}

// parseMembers reads the members of the sync of step from their key's
// value, checking its signature in a federation with site keys.
func (b *boardExchange) parseMembers(step int64, v []byte) ([]int, error) {
	list, err := b.verifyMembers(step, v)
	if err != nil {
		return nil, err
	}
	m, err := parseMembers(list, len(b.Sites))
	if err != nil {
		return nil, fmt.Errorf("the members of the sync of step %d: %w", step, err)
	}
	return m, nil
}

func parseMembers(v []byte, sites int) ([]int, error) {
	var m []int
	for f := range strings.SplitSeq(string(v), ",") {
		i, err := strconv.Atoi(f)
		if err != nil || i < 0 || i >= sites || (len(m) > 0 && i <= m[len(m)-1]) {
			return nil, fmt.Errorf("%q is not an increasing list of site indexes below %d", v, sites)
		}
		m = append(m, i)
	}
	return m, nil
}

// expected is the sites a sync waits for: every site but those presumed
// down, which missed the last GiveUp syncs in a row (as this rank applied
// them) and have not said since that they are back. A site that is down
// thus costs the others GiveUp deadlines, not one per sync; a site that
// is late, not down, says it is back each time it finds itself left out,
// and is waited for again.
func (b *boardExchange) expected(ctx context.Context, step int64) ([]bool, error) {
	exp := make([]bool, len(b.Sites))
	for s := range exp {
		if b.missedRun[s] < b.giveUp() {
			exp[s] = true
			continue
		}
		v, err := b.Board.Get(ctx, b.backKey(s))
		if b.missing(err) {
			continue
		} else if err != nil {
			return nil, err
		}
		at, err := strconv.ParseInt(string(v), 10, 64)
		exp[s] = err == nil && step <= at+int64(b.giveUp())*b.every
	}
	return exp, nil
}

func (b *boardExchange) giveUp() int {
	if b.GiveUp == 0 {
		return 3
	}
	return b.GiveUp
}

func (b *boardExchange) backKey(site int) string {
	return b.Prefix + "/back/" + strconv.Itoa(site)
}

// back says that this site, which missed syncs up to the one of step, is
// back: the others wait for it again (up to the deadline) at the next
// GiveUp syncs.
func (b *boardExchange) back(ctx context.Context, step int64) error {
	if b.place != 0 {
		return nil // one rank speaks for the site
	}
	return b.Board.Set(ctx, b.backKey(b.Site), []byte(strconv.FormatInt(step, 10)))
}

// decide waits for the members of the sync of step: every expected site,
// or those complete when the deadline after posted passed (at least one).
// Sites not expected that are complete by then are members too. It
// reports whether the sync went ahead without an expected site (after the
// deadline).
func (b *boardExchange) decide(ctx context.Context, step int64, posted time.Time) ([]int, bool, error) {
	bell := b.key(step, "bell")
	exp, err := b.expected(ctx, step)
	if err != nil {
		return nil, false, err
	}
	// It went ahead without a site it waited for: the deadline passed, on
	// this rank or on the one that decided.
	decided := func(m []int) ([]int, bool) {
		waited := false
		for s, e := range exp {
			waited = waited || (e && !slices.Contains(m, s))
		}
		return m, waited
	}
	everyone := !slices.Contains(exp, false)
	for {
		ring, err := b.Board.Get(ctx, bell)
		if err != nil && !b.missing(err) {
			return nil, false, err
		}
		n, _ := strconv.ParseInt(string(ring), 10, 64)
		if n >= decidedBell {
			m, ok, err := b.members(ctx, step)
			if err == nil && !ok {
				err = fmt.Errorf("the sync of step %d rang decided but has no members", step)
				if at, perr := b.pruned(ctx); perr == nil && step <= at {
					err = b.tooFarBehind(step, at) // pruned since the bell was read
				}
			}
			m, waited := decided(m)
			return m, waited, err
		}
		late := b.deadline > 0 && time.Since(posted) >= b.deadline
		var complete []int
		all := true // every expected site is complete
		if everyone && n == int64(len(b.Sites)*b.places) {
			// Every rank of every site posted: no need to count by site.
			for s := range b.Sites {
				complete = append(complete, s)
			}
		} else if late || !everyone {
			for s := range b.Sites {
				v, err := b.Board.Get(ctx, b.key(step, "ready", strconv.Itoa(s)))
				if err != nil && !b.missing(err) {
					return nil, false, err
				}
				if c, _ := strconv.Atoi(string(v)); err == nil && c >= b.places {
					complete = append(complete, s)
				} else if exp[s] {
					all = false
				}
			}
		}
		if (all && len(complete) > 0) || (late && len(complete) > 0) {
			v := make([]string, len(complete))
			for i, s := range complete {
				v[i] = strconv.Itoa(s)
			}
			cur, swapped, err := b.Board.CompareAndSwap(ctx, b.key(step, "members"), nil, b.signMembers(step, []byte(strings.Join(v, ","))))
			if err != nil {
				return nil, false, err
			}
			if swapped {
				// The members of a pruned sync are gone, so a proposal
				// for one lands: one made after exchange looked at the
				// mark, while the sync was being pruned. The mark was
				// raised before the members went, so it says so now.
				if at, err := b.pruned(ctx); err != nil {
					return nil, false, err
				} else if step <= at {
					b.Board.Delete(ctx, b.key(step, "members"))
					return nil, false, b.tooFarBehind(step, at)
				}
			}
			m, err := b.parseMembers(step, cur)
			if err != nil {
				return nil, false, err
			}
			// Wake the ranks waiting on the bell: the proposer rings it,
			// and so does a rank that finds another's proposal before the
			// bell says so (its proposer may have died between the two;
			// ringing twice still reads decided).
			if swapped || n < decidedBell {
				if _, err := b.Board.Add(ctx, bell, decidedBell); err != nil {
					return nil, false, err
				}
			}
			m, waited := decided(m)
			return m, waited, nil
		}
		wait := pollEvery
		if b.deadline > 0 && !late {
			wait = min(wait, b.deadline-time.Since(posted))
		}
		wctx, cancel := context.WithTimeout(ctx, wait)
		_, err = b.Board.WaitChange(wctx, bell, ring)
		cancel()
		if ctx.Err() != nil {
			return nil, false, ctx.Err()
		}
		if err != nil && wctx.Err() == nil {
			return nil, false, err
		}
	}
}

// exchange posts msg, waits for the sync's members and sums their
// messages for this place, in site order, into x.avg (averaged).
func (b *boardExchange) exchange(ctx context.Context, x *exchange, d *decoder, msg []byte) error {
	if at, err := b.pruned(ctx); err != nil {
		return fmt.Errorf("reading what the board keeps: %w", err)
	} else if x.step <= at {
		return b.tooFarBehind(x.step, at)
	}
	if err := b.post(ctx, x.step, msg); err != nil {
		return fmt.Errorf("posting this site's delta: %w", err)
	}
	x.sent = int64(len(msg))
	members, waited, err := b.decide(ctx, x.step, time.Now())
	if err != nil {
		return fmt.Errorf("waiting for the sync's members: %w", err)
	}
	x.waited = waited
	if err := b.average(ctx, x, d, members, true); err != nil {
		return err
	}
	if !slices.Contains(members, b.Site) {
		x.own = msg // to be put back into error feedback
		// Late, not gone: have the others wait for this site again.
		if err := b.back(ctx, x.step); err != nil {
			return fmt.Errorf("saying this site is back: %w", err)
		}
	}
	b.prune(ctx, x.step, members)
	return nil
}

// average sets x.avg to the mean of the members' messages for this place;
// fresh says the sync was just decided (fetch).
func (b *boardExchange) average(ctx context.Context, x *exchange, d *decoder, members []int, fresh bool) error {
	x.members = members
	for s := range b.missedRun {
		if slices.Contains(members, s) {
			b.missedRun[s] = 0
		} else {
			b.missedRun[s]++
		}
	}
	msgs, err := b.fetch(ctx, x.step, members, fresh)
	if err != nil {
		return err
	}
	if i := slices.Index(members, b.Site); i >= 0 {
		x.mine = msgs[i]
	}
	return x.mean(d, msgs, func(i int) string { return fmt.Sprintf("site %q (place %d)", b.Sites[members[i]], b.place) })
}

// Absence records a sync that went ahead without some sites.
type Absence struct {
	Step    int64    `json:"step"`
	Missing []string `json:"missing"`
	// Members are the sites whose deltas the sync averaged.
	Members []string `json:"members"`
}

// maxAbsences bounds the absences an Outer remembers.
const maxAbsences = 64
