package runtime

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/diloco"
	"github.com/ringo-ml/ringo/internal/audit"
	"github.com/ringo-ml/ringo/internal/auth"
	"github.com/ringo-ml/ringo/runtime/rendezvous"
)

// Sites is the job split by site: the group of this rank's site, for the
// every-step gradient average, and the group of the ranks that hold this
// rank's place in every site, for the outer syncs.
type Sites struct {
	// Names lists the sites in order of their first rank; Index is this
	// rank's site among them.
	Names []string
	Index int
	// Transport is what the outer syncs run over: "libp2p" when the
	// job's group does (peer IDs pinned, encrypted), "store" for a
	// federation (the sites meet in a store), else "tcp".
	Transport string
	// Site is the group of this rank's site (its ranks in rank order).
	// Cross holds one rank per site, in the order of Names: the ranks
	// whose place in their site is this rank's; nil for a federation.
	Site, Cross collective.Comm

	board rendezvous.Store // a federation's, else nil
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

// Close closes both groups (and a federation's store connection).
func (s *Sites) Close() error {
	errs := []error{s.Site.Close()}
	if s.Cross != nil {
		errs = append(errs, s.Cross.Close())
	}
	if s.board != nil {
		errs = append(errs, s.board.Close())
	}
	return errors.Join(errs...)
}

// Environment of a site in a federation: `ringo launch --federation`
// sets it, with RINGO_SITE for the site's name.
const (
	// EnvFederation is the store the sites meet in: HOST:PORT of a ringo
	// rendezvous store, or etcd://HOST:PORT[,HOST:PORT...]. Its token is
	// the job's (RINGO_TOKEN_FILE), the same file at every site.
	EnvFederation = "RINGO_FEDERATION"
	// EnvFederationSites lists every site, comma-separated, in the
	// order their deltas are summed: the same list at every site.
	EnvFederationSites = "RINGO_FEDERATION_SITES"
	// EnvFederationID namespaces the federation's keys in the store.
	EnvFederationID = "RINGO_FEDERATION_ID"
	// EnvFederationTLSCert, Key and CA name the PEM files for mutual TLS
	// to the store (ringo launch --tls-*): all three, or none.
	EnvFederationTLSCert = "RINGO_FEDERATION_TLS_CERT"
	EnvFederationTLSKey  = "RINGO_FEDERATION_TLS_KEY"
	EnvFederationTLSCA   = "RINGO_FEDERATION_TLS_CA"
)

// federationDialTimeout bounds how long a worker tries to reach the
// sites' store.
const federationDialTimeout = 2 * time.Minute

// federated reports whether this worker's job is one site of a
// federation.
func federated() bool { return os.Getenv(EnvFederation) != "" }

// newFederation forms the group of this job (the site) and connects to
// the federation's store.
func (g *Group) newFederation(ctx context.Context) (*Sites, diloco.Federation, error) {
	var fed diloco.Federation
	endpoint, id := os.Getenv(EnvFederation), os.Getenv(EnvFederationID)
	names := strings.Split(os.Getenv(EnvFederationSites), ",")
	if id == "" {
		id = "default"
	}
	site := slices.Index(names, g.Site)
	if site < 0 {
		return nil, fed, fmt.Errorf("federation: rank %d: this site %q (%s) is not among %s=%q: give ringo launch a --site from --federation-sites", g.Rank(), g.Site, EnvSite, EnvFederationSites, os.Getenv(EnvFederationSites))
	}
	tokenFile := os.Getenv(EnvTokenFile)
	if tokenFile == "" {
		return nil, fed, fmt.Errorf("federation: rank %d: no %s: the sites' store is reached with the job token, the same file at every site (ringo launch --token-file)", g.Rank(), EnvTokenFile)
	}
	token, err := auth.ReadTokenFile(tokenFile)
	if err != nil {
		return nil, fed, fmt.Errorf("federation: rank %d: %w", g.Rank(), err)
	}
	var cliTLS *tls.Config
	if tf := (rendezvous.TLSFiles{Cert: os.Getenv(EnvFederationTLSCert), Key: os.Getenv(EnvFederationTLSKey), CA: os.Getenv(EnvFederationTLSCA)}); tf.Enabled() {
		if _, cliTLS, err = tf.Configs(); err != nil {
			return nil, fed, fmt.Errorf("federation: rank %d: TLS to the sites' store: %w", g.Rank(), err)
		}
	}
	// A store that stays unreachable (down, or TLS on one side only) is a
	// failure the launcher can report and restart from, not a hang.
	dctx, cancel := context.WithTimeout(ctx, federationDialTimeout)
	defer cancel()
	var board rendezvous.Store
	if rest, ok := strings.CutPrefix(endpoint, "etcd://"); ok {
		board, err = rendezvous.NewEtcd(dctx, rendezvous.EtcdConfig{Endpoints: strings.Split(rest, ","), Prefix: "/", Token: token, DialTimeout: 10 * time.Second, TLS: cliTLS})
	} else {
		board, err = rendezvous.DialTLS(dctx, endpoint, token, cliTLS)
	}
	if err != nil {
		return nil, fed, fmt.Errorf("federation: rank %d: the sites' store %s (%s): %w", g.Rank(), endpoint, EnvFederation, err)
	}
	all := make([]int, g.Size())
	for i := range all {
		all[i] = i
	}
	s := &Sites{Names: names, Index: site, Transport: "store", board: board}
	if s.Site, err = g.newSubgroup(ctx, all, fmt.Sprintf("site %q group", g.Site)); err != nil {
		board.Close()
		return nil, fed, err
	}
	fed = diloco.Federation{Board: board, NotFound: rendezvous.ErrNotFound, Prefix: "/ringo/federation/" + id, Sites: names, Site: site}
	if ident, peers := os.Getenv(EnvFederationIdentity), os.Getenv(EnvFederationPeers); ident != "" || peers != "" {
		if ident == "" || peers == "" {
			s.Close()
			return nil, fed, fmt.Errorf("federation: rank %d: %s=%q and %s=%q: give both (ringo launch --federation-identity and --federation-peers) or neither", g.Rank(), EnvFederationIdentity, ident, EnvFederationPeers, peers)
		}
		if fed.Key, fed.SiteKeys, err = FederationKeys(ident, peers, names, site); err != nil {
			s.Close()
			return nil, fed, fmt.Errorf("rank %d: %w", g.Rank(), err)
		}
	}
	return s, fed, nil
}

// Outer trains across sites: gradients are averaged inside the site every
// step (over Sites.Site), and the sites synchronise every cfg.Every steps
// (package diloco). Close releases it and its groups.
//
// The sites are either ranks of one job (ringo launch --site on each
// node), which fails and restarts as one, or, in a federation (ringo
// launch --federation), jobs of their own that meet in a store: there a
// site that is down or late is left out of the syncs it misses (after
// cfg.Deadline) while the others go on, and catches up when it is back
// (CatchUp). The site's first rank logs and audits every sync that went
// ahead without some site (event outer.site_missing).
type Outer struct {
	*diloco.Outer
	*Sites
	rank   int   // in the job
	logged int64 // absences reported so far (Stats.Partial then)
	audit  *audit.Log
	rep    *reporter
	syncs  int64 // Stats.Syncs as last reported
}

// NewOuter forms the site groups and the outer synchronisation of params,
// which must be the same on every rank (broadcast them over g first).
func (g *Group) NewOuter(ctx context.Context, cfg diloco.Config, params ...[]float32) (*Outer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var s *Sites
	var o *diloco.Outer
	var err error
	if federated() {
		var fed diloco.Federation
		if s, fed, err = g.newFederation(ctx); err != nil {
			return nil, err
		}
		if o, err = diloco.NewFederated(ctx, s.Site, fed, cfg, params...); err != nil {
			err = fmt.Errorf("rank %d: %w", g.Rank(), err)
		} else if fed.Key != nil && s.Site.Rank() == 0 {
			fmt.Fprintf(os.Stderr, "ringo: site %q signs its deltas with its identity, and takes a site's deltas only when that site signed them\n", g.Site)
		}
	} else {
		if s, err = g.NewSites(ctx); err != nil {
			return nil, err
		}
		o, err = diloco.New(s.Site, s.Cross, cfg, params...)
	}
	if err != nil {
		s.Close()
		return nil, err
	}
	return &Outer{Outer: o, Sites: s, rank: g.Rank(), audit: audit.FromEnv(), rep: &g.rep, syncs: -1}, nil
}

// Step is diloco.Outer's Step, and reports the syncs some site missed.
func (o *Outer) Step(ctx context.Context, step int64) error {
	err := o.Outer.Step(ctx, step)
	o.reportAbsences()
	o.reportForged(err)
	return err
}

// Sync is diloco.Outer's Sync, and reports the syncs some site missed.
func (o *Outer) Sync(ctx context.Context, step int64) error {
	err := o.Outer.Sync(ctx, step)
	o.reportAbsences()
	o.reportForged(err)
	return err
}

// reportForged audits a delta, or a sync's members, refused for its
// signature (diloco.ForgedError): a holder of the store's token wrote it,
// not the site it names. Every rank that read it records it.
func (o *Outer) reportForged(err error) {
	var f *diloco.ForgedError
	if !errors.As(err, &f) {
		return
	}
	what := "delta"
	if f.Site == "" {
		what = "members"
	}
	o.audit.Record("outer.delta_refused", map[string]any{"site": o.Names[o.Index], "rank": o.rank, "step": f.Step, "what": what, "from_site": f.Site, "place": f.Place, "why": f.Why})
}

// CatchUp is diloco.Outer's CatchUp, and reports the syncs some site
// missed (this one, while it was down).
func (o *Outer) CatchUp(ctx context.Context, step int64) (int64, error) {
	to, err := o.Outer.CatchUp(ctx, step)
	o.reportForged(err)
	if err == nil && to > step && o.Site.Rank() == 0 {
		fmt.Fprintf(os.Stderr, "ringo: site %q caught up from step %d to step %d: replayed the outer syncs the other sites took without it\n", o.Names[o.Index], step, to)
	}
	o.reportAbsences()
	return to, err
}

// reportAbsences logs and audits, on the site's first rank, the syncs
// that went ahead without some site since the last call, and hands the
// counters to the worker's Report.
func (o *Outer) reportAbsences() {
	st := o.Stats()
	if st.Syncs == o.syncs {
		return // absences come only with syncs
	}
	o.syncs = st.Syncs
	a := o.Absences()
	r := &OuterReport{Site: o.Names[o.Index], Sites: o.Names, Transport: o.Transport, Stats: st, Ratio: st.Ratio(), Absences: a[max(0, len(a)-8):]}
	o.rep.mu.Lock()
	o.rep.outer = r
	o.rep.mu.Unlock()
	fresh := a[max(0, len(a)-int(st.Partial-o.logged)):]
	o.logged = st.Partial
	if o.Site.Rank() != 0 {
		return
	}
	me := o.Names[o.Index]
	for _, x := range fresh {
		if slices.Contains(x.Missing, me) {
			fmt.Fprintf(os.Stderr, "ringo: site %q missed the outer sync of step %d (sites %v went ahead without it); it applied that sync and keeps its delta for the next\n", me, x.Step, x.Members)
		} else {
			fmt.Fprintf(os.Stderr, "ringo: site %q: the outer sync of step %d went ahead without sites %v (late or down), averaging %v\n", me, x.Step, x.Missing, x.Members)
		}
		o.audit.Record("outer.site_missing", map[string]any{"site": me, "rank": o.rank, "step": x.Step, "missing": x.Missing, "members": x.Members})
	}
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
