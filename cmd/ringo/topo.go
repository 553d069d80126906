package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	worker "github.com/ringo-ml/ringo/runtime"
	"github.com/ringo-ml/ringo/runtime/launch/observe"
	"github.com/ringo-ml/ringo/topology"
)

const topoUsage = `Usage: ringo topo <command> ...

Commands:
  probe --out MATRIX.json [--bytes 4M]
                   run as the program of a job (ringo launch ... -- ringo topo
                   probe) to measure bandwidth and latency between every pair
                   of its ranks, in contention-free rounds; rank 0 writes the
                   matrix and prints it
  place --hosts FILE --matrix FILE [--ranks N] [--json]
                   put a job's ranks on the hosts' slots and order its ring for
                   the largest bottleneck bandwidth; compares the naive order
  show MATRIX.json [--png FILE]
                   print a measured matrix (MB/s and µs) and its best ring;
                   --png draws a heat map with the ring
  show --metrics-addr HOST:PORT [--png FILE]
                   the same for a running job: the live matrix its workers
                   measure, the ring in use and its re-plans

The hosts file is JSON: [{"name": "h0", "addr": "10.0.0.1", "slots": 4}, ...],
with an optional "intra_bandwidth" (bytes/s between two slots of the host,
e.g. NVLink). The matrix is measured between those hosts (one row each,
named by name or addr). See 'go doc github.com/ringo-ml/ringo/topology'.
`

func runTopo(ctx context.Context, args []string) error {
	return runGroup(ctx, "topo", topoUsage, topoCommands(), args)
}

func topoCommands() []subcommand {
	return []subcommand{
		{name: "probe", run: topoProbe},
		{name: "place", run: topoPlace},
		{name: "show", run: topoShow},
	}
}

const topoPlaceUsage = `Usage: ringo topo place --hosts FILE --matrix FILE [--ranks N] [--json]

Puts N ranks on the hosts' slots and orders their ring for the largest
bottleneck (slowest link): as few hosts as that allows, each host's ranks
together on its fast links, one network crossing between neighbouring
hosts. Ranks are numbered along the ring. Prints which rank runs on which
host and slot, the ring, its bottleneck and the naive order's (hosts as
listed, slots in turn).

Flags:
`

func topoPlace(_ context.Context, args []string) error {
	fs := newFlagSet("topo place", topoPlaceUsage)
	hostsPath := fs.String("hosts", "", "hosts file (JSON: name, addr, slots, intra_bandwidth per host)")
	matrixPath := fs.String("matrix", "", "bandwidth matrix measured between the hosts")
	ranks := fs.Int("ranks", 0, "ranks to place (default: every slot)")
	asJSON := fs.Bool("json", false, "print the plan as one JSON object")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	switch {
	case *hostsPath == "" || *matrixPath == "":
		return usageErr(fs, "place needs --hosts FILE and --matrix FILE")
	case *ranks < 0:
		return usageErr(fs, "--ranks %d: want a positive number", *ranks)
	}
	hosts, err := topology.ReadHosts(*hostsPath)
	if err != nil {
		return err
	}
	m, err := topology.ReadMatrix(*matrixPath)
	if err != nil {
		return err
	}
	if *ranks == 0 {
		for _, h := range hosts {
			*ranks += h.Slots
		}
	}
	plan, err := topology.Place(hosts, m, *ranks)
	if err != nil {
		return fmt.Errorf("hosts %s, matrix %s: %w", *hostsPath, *matrixPath, err)
	}
	if *asJSON {
		printJSON(plan)
		return nil
	}
	renderPlan(os.Stdout, plan)
	return nil
}

// renderPlan prints where each rank runs, the ring and its bottleneck
// beside the naive order's.
func renderPlan(out io.Writer, p *topology.Plan) {
	how := "best under the model"
	if !p.Exact {
		how = "heuristic: more than 12 hosts"
	}
	hosts := "hosts"
	if len(p.Hosts) == 1 {
		hosts = "host"
	}
	fmt.Fprintf(out, "%d ranks on %d %s (%s): %s\n\n", len(p.Ranks), len(p.Hosts), hosts, how, strings.Join(p.Hosts, ", "))
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "RANK\tHOST\tADDR\tSLOT")
	for _, s := range p.Ranks {
		fmt.Fprintf(w, "%d\t%s\t%s\t%d\n", s.Rank, s.Host, orDash(s.Addr), s.Slot)
	}
	w.Flush()
	ring := make([]string, len(p.Ring))
	for i, r := range p.Ring {
		ring[i] = fmt.Sprint(r)
	}
	fmt.Fprintf(out, "\nring: %s (and back)\n", strings.Join(ring, " "))
	if p.Bottleneck == 0 {
		fmt.Fprintf(out, "bottleneck: unknown: the ring stays inside %s, whose intra_bandwidth the hosts file does not give\n", p.Hosts[0])
		return
	}
	fmt.Fprintf(out, "bottleneck: %s", mbps(p.Bottleneck))
	switch {
	case p.NaiveBottleneck == 0:
		fmt.Fprintf(out, "; naive order (hosts as listed, slots in turn): unknown\n")
	default:
		fmt.Fprintf(out, "; naive order (hosts as listed, slots in turn): %s (%.2fx)\n", mbps(p.NaiveBottleneck), p.Bottleneck/p.NaiveBottleneck)
	}
}

func mbps(v float64) string { return fmt.Sprintf("%.0f MB/s", v/1e6) }

// heatMapWidth and heatMapHeight are the PNG's size in pixels.
const heatMapWidth, heatMapHeight = 960, 768

const topoShowUsage = `Usage: ringo topo show MATRIX.json [--png FILE]
       ringo topo show --metrics-addr HOST:PORT [--png FILE]

Prints a measured matrix as tables (bandwidth in MB/s, latency in µs, rows
sending to columns), the best ring through its ranks and its bottleneck
beside rank order's; --png draws the bandwidth as a heat map with the ring.

With --metrics-addr (a launcher's, of a job started with --topology probe)
it prints the running job's live matrix instead: the probe's figures with
every link the job's own traffic crossed replaced by the rate TCP measured,
the ring of hosts in use and each time the job moved it; and, where the
launchers run as root, what other programs send over the links the job
left idle (which lowers those links in the matrix), and this node's links
as the kernel counted them (eBPF: RTT, segments, retransmits of every
program's connections to each other node), which a job without a live
matrix (a PyTorch script) has too.

Flags:
`

func topoShow(ctx context.Context, args []string) error {
	fs := newFlagSet("topo show", topoShowUsage)
	pngPath := fs.String("png", "", "also draw the bandwidth as a heat map with the ring, to this PNG file")
	live := fs.String("metrics-addr", "", "show the live matrix of the job whose launcher serves metrics here (HOST:PORT)")
	path, err := parseWithTarget(fs, args)
	if err != nil {
		return err
	}
	var m *topology.Matrix
	var ring []int
	switch {
	case path != "" && *live != "":
		return usageErr(fs, "show takes a MATRIX.json file or --metrics-addr, not both")
	case *live != "":
		v, err := fetchLiveView(ctx, *live)
		peers := fetchPeers(ctx, *live)
		var none *noLiveView
		if errors.As(err, &none) && peers != nil {
			// A job without Go workers that re-plan (a PyTorch script, say)
			// still has the kernel's counts of its links.
			fmt.Printf("no live matrix: %s\n\n", none.why)
			printPeers(peers)
			return nil
		}
		if err != nil {
			return err
		}
		defer printPeers(peers)
		m, ring = v.Matrix, v.Ring
		fmt.Printf("live matrix of the job at %s: %d hosts, %d windows observed, probed %s\n\n", *live, m.Size(), v.Windows, m.Time.Format("2006-01-02 15:04:05 MST"))
		if err := topology.WriteTable(os.Stdout, m); err != nil {
			return err
		}
		if v.Others != nil {
			fmt.Println()
			if err := topology.WriteOthers(os.Stdout, m, v.Others); err != nil {
				return err
			}
		}
		fmt.Printf("\nring in use: %s, slowest link %s\n", hostNames(m, ring), mbps(topology.Bottleneck(m, ring)))
		for _, p := range v.Replans {
			fmt.Printf("re-planned at step %d (%s): ring %s (was %s); slowest link %s before, %s predicted", p.Step, p.Time.Format("15:04:05"),
				hostNames(m, p.To), hostNames(m, p.From), mbps(p.Before), mbps(p.Predicted))
			if p.Measured > 0 {
				fmt.Printf(", %s measured (%+.0f%%)", mbps(p.Measured), 100*p.MeasuredGain)
			}
			fmt.Println()
		}
		if len(v.Replans) == 0 {
			fmt.Println("no re-plans yet")
		}
	case path == "":
		return usageErr(fs, "show needs a MATRIX.json file or --metrics-addr HOST:PORT")
	default:
		if m, err = topology.ReadMatrix(path); err != nil {
			return err
		}
		fmt.Printf("%s: %d ranks, measured %s\n\n", path, m.Size(), m.Time.Format("2006-01-02 15:04:05 MST"))
		if err := topology.WriteTable(os.Stdout, m); err != nil {
			return err
		}
	}
	best, b := topology.SolveRing(m)
	if ring == nil {
		ring = best
	}
	if len(best) > 1 {
		s := make([]string, len(best))
		for i, r := range best {
			s[i] = fmt.Sprint(r)
		}
		how := "exact"
		if m.Size() > topology.MaxExact {
			how = "heuristic"
		}
		naive := make([]int, m.Size())
		for i := range naive {
			naive[i] = i
		}
		fmt.Printf("\nbest ring (%s): %s, bottleneck %s; rank order 0..%d: %s\n", how, strings.Join(s, " "), mbps(b), m.Size()-1, mbps(topology.Bottleneck(m, naive)))
	}
	if *pngPath == "" {
		return nil
	}
	f, err := os.Create(*pngPath)
	if err != nil {
		return err
	}
	if err := topology.WriteHeatMap(f, m, ring, heatMapWidth, heatMapHeight); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", *pngPath, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Printf("heat map: %s\n", *pngPath)
	return nil
}

const topoProbeUsage = `Usage: ringo launch ... -- ringo topo probe --out MATRIX.json [--bytes 4M]

Runs as the program of a job: every rank measures bandwidth and latency to
every other, in contention-free rounds; rank 0 writes the matrix and prints
it.

Flags:
`

// topoProbe is a standalone probe job: every rank of the job it runs in
// measures its links, and rank 0 saves and prints the matrix.
func topoProbe(ctx context.Context, args []string) error {
	fs := newFlagSet("topo probe", topoProbeUsage)
	out := fs.String("out", "matrix.json", "where rank 0 writes the matrix")
	cfg := topology.DefaultProbeConfig()
	size := int64(cfg.MessageBytes)
	fs.Var(byteFlag{&size}, "bytes", "size of each timed message")
	fs.IntVar(&cfg.Iterations, "iters", cfg.Iterations, "timed messages per direction and pair")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	cfg.MessageBytes = int(size)
	g, err := worker.Init(ctx)
	if err != nil {
		return err
	}
	defer g.Close()
	if g.Size() < 2 {
		return errors.New("a probe needs at least 2 ranks: run it under ringo launch, e.g. ringo launch --nnodes 4 ... -- ringo topo probe")
	}
	m, perr := g.Probe(ctx, cfg)
	if m == nil {
		return perr
	}
	if g.Rank() == 0 {
		if err := topology.WriteMatrix(*out, m); err != nil {
			return err
		}
		topology.WriteTable(os.Stdout, m)
		fmt.Printf("matrix of %d ranks written to %s\n", m.Size(), *out)
	}
	return perr
}

// noLiveView is fetchLiveView's error for a launcher whose job has no
// live view.
type noLiveView struct{ why string }

func (e *noLiveView) Error() string { return e.why }

// linkCounts is what topo show reads of a launcher's /status.json: the
// kernel's counts of its node's connections to each other node.
type linkCounts struct {
	Host     string               `json:"host"`
	NodeRank int                  `json:"node_rank"`
	TCP      *observe.TCPCounters `json:"tcp"`
}

// fetchPeers reads the launcher's per-peer TCP counters, or nil where it
// has none (no eBPF, one node) or cannot be asked.
func fetchPeers(ctx context.Context, addr string) *linkCounts {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status.json", nil)
	if err != nil {
		return nil
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var c linkCounts
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&c) != nil || c.TCP == nil || len(c.TCP.Peers) == 0 {
		return nil
	}
	return &c
}

// printPeers prints the per-peer counters, if any.
func printPeers(c *linkCounts) {
	if c == nil {
		return
	}
	fmt.Printf("\nthe links of node %d (%s), as its kernel counted every program's connections (eBPF):\n", c.NodeRank, c.Host)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "peer\tnode\tconnections\tsmoothed RTT\tsegments received\tretransmits")
	for _, p := range c.TCP.Peers {
		rtt := "-"
		if p.Segments > 0 {
			rtt = time.Duration(p.MeanRTTSeconds * float64(time.Second)).Round(time.Microsecond).String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\t%d\n", p.Host, p.NodeRank, p.Connections, rtt, p.Segments, p.Retransmits)
	}
	tw.Flush()
}

// fetchLiveView asks a launcher's metrics server for its job's live view
// of the links.
func fetchLiveView(ctx context.Context, addr string) (*topology.LiveView, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	url := "http://" + addr + "/topology.json"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %q: %w", addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking the launcher at %s for the live topology (is the job running with --metrics-addr %s?): %w", addr, addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	if resp.StatusCode == http.StatusNotFound {
		return nil, &noLiveView{fmt.Sprintf("%s: %s", url, strings.TrimSpace(string(body)))}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	var v topology.LiveView
	if err := json.Unmarshal(body, &v); err != nil {
		return nil, fmt.Errorf("%s: not a live topology: %w", url, err)
	}
	if v.Matrix == nil {
		return nil, fmt.Errorf("%s: the answer holds no matrix", url)
	}
	if err := v.Matrix.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	seen := make([]bool, v.Matrix.Size())
	for _, h := range v.Ring {
		if h < 0 || h >= len(seen) || seen[h] {
			return nil, fmt.Errorf("%s: the ring %v is not an order of the matrix's %d hosts", url, v.Ring, len(seen))
		}
		seen[h] = true
	}
	if len(v.Ring) != len(seen) {
		return nil, fmt.Errorf("%s: a ring of %d hosts for a matrix of %d", url, len(v.Ring), len(seen))
	}
	return &v, nil
}

// hostNames names a ring of matrix indices by the matrix's hosts.
func hostNames(m *topology.Matrix, ring []int) string {
	s := make([]string, len(ring))
	for i, h := range ring {
		s[i] = fmt.Sprint(h)
		if h >= 0 && h < len(m.Hosts) && m.Hosts[h] != "" {
			s[i] = m.Hosts[h]
		}
	}
	return strings.Join(s, " -> ")
}
