package runtime

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/diloco"
)

// Sites is the job split by site: the group of this rank's site, for the
// every-step gradient average, and the group of the ranks that hold this
// rank's place in every site, for the outer syncs.
type Sites struct {
	// Names lists the sites in order of their first rank; Index is this
	// rank's site among them.
	Names []string
	Index int
	// Transport is what the groups run over: "libp2p" when the job's
	// group does (peer IDs pinned, encrypted), else "tcp".
	Transport string
	// Site is the group of this rank's site (its ranks in rank order).
	// Cross holds one rank per site, in the order of Names: the ranks
	// whose place in their site is this rank's.
	Site, Cross collective.Comm
}

// NewSites forms the site groups from every rank's Site label. Every rank
// calls it at the same point. Every site must have the same number of
// ranks. The caller closes them (Close).
func (g *Group) NewSites(ctx context.Context) (*Sites, error) {
	labels, err := gatherStrings(ctx, g, g.Site)
	if err != nil {
		return nil, fmt.Errorf("sites: rank %d: learning every rank's site: %w", g.Rank(), err)
	}
	var names []string
	members := map[string][]int{}
	for r, l := range labels {
		if _, ok := members[l]; !ok {
			names = append(names, l)
		}
		members[l] = append(members[l], r)
	}
	per := len(members[names[0]])
	for _, n := range names {
		if len(members[n]) != per {
			var sizes []string
			for _, n := range names {
				sizes = append(sizes, fmt.Sprintf("%q %d", n, len(members[n])))
			}
			return nil, fmt.Errorf("sites: the sites have different numbers of ranks (%s): each rank of a site exchanges its share with the same place in every other site, so all need the same number", strings.Join(sizes, ", "))
		}
	}
	s := &Sites{Names: names, Transport: "tcp"}
	if g.p2p != nil {
		s.Transport = "libp2p"
	}
	mine := members[g.Site]
	var place int
	for i, n := range names {
		if n == g.Site {
			s.Index = i
		}
	}
	for i, r := range mine {
		if r == g.Rank() {
			place = i
		}
	}
	if s.Site, err = g.newSubgroup(ctx, mine, fmt.Sprintf("site %q group", g.Site)); err != nil {
		return nil, err
	}
	column := make([]int, len(names))
	for i, n := range names {
		column[i] = members[n][place]
	}
	if s.Cross, err = g.newSubgroup(ctx, column, fmt.Sprintf("cross-site group of place %d", place)); err != nil {
		s.Site.Close()
		return nil, err
	}
	return s, nil
}

// Close closes both groups.
func (s *Sites) Close() error {
	return errors.Join(s.Site.Close(), s.Cross.Close())
}

// Outer trains across sites: gradients are averaged inside the site every
// step (over Sites.Site), and the sites synchronise every cfg.Every steps
// (package diloco). Close releases it and its groups.
type Outer struct {
	*diloco.Outer
	*Sites
}

// NewOuter forms the site groups and the outer synchronisation of params,
// which must be the same on every rank (broadcast them over g first).
func (g *Group) NewOuter(ctx context.Context, cfg diloco.Config, params ...[]float32) (*Outer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s, err := g.NewSites(ctx)
	if err != nil {
		return nil, err
	}
	o, err := diloco.New(s.Site, s.Cross, cfg, params...)
	if err != nil {
		s.Close()
		return nil, err
	}
	return &Outer{Outer: o, Sites: s}, nil
}

// Track registers the outer optimizer's state with t, so that its
// checkpoints resume it: the global parameters of the last sync and the
// outer momentum (the same on every rank), and this rank's error
// feedback (its own). Checkpoints continue the run only when taken right
// after a sync without delay, where every site holds the same parameters.
func (o *Outer) Track(t *Trainer) {
	t.Track("outer.anchor", o.Anchor())
	t.Track("outer.momentum", o.Momentum())
	t.TrackPerRank("outer.residual", o.Residual())
}

// Close waits for a sync in flight and closes the site groups.
func (o *Outer) Close() error {
	return errors.Join(o.Outer.Close(), o.Sites.Close())
}
