package topology

import (
	"errors"
	"fmt"
	"image/color"
	"io"
	"math"
	"strings"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/palette/moreland"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// rankLabel names rank i for people: its index, and its host when known.
func rankLabel(m *Matrix, i int) string {
	if i < len(m.Hosts) && m.Hosts[i] != "" {
		return fmt.Sprintf("%d %s", i, m.Hosts[i])
	}
	return fmt.Sprint(i)
}

// WriteTable writes the matrix as two tables, rows sending to columns:
// bandwidth in MB/s (10⁶ bytes per second) and latency in µs; then the
// pairs the probe could not measure.
func WriteTable(w io.Writer, m *Matrix) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	writeMatrixTable(tw, m, "bandwidth MB/s", m.Bandwidth, func(v float64) string { return fmt.Sprintf("%.0f", v/1e6) })
	if len(m.LatencyUS) > 0 {
		fmt.Fprintln(tw)
		writeMatrixTable(tw, m, "latency µs", m.LatencyUS, func(v float64) string { return fmt.Sprintf("%.1f", v) })
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, e := range m.Errors {
		if _, err := fmt.Fprintf(w, "not measured: %s\n", e); err != nil {
			return err
		}
	}
	return nil
}

// WriteOthers writes, where any is known, what other programs send over
// the links a job left idle (LiveView.Others, bytes/s) as a table in
// MB/s, rows sending to columns; nothing where none is.
func WriteOthers(w io.Writer, m *Matrix, others [][]float64) error {
	seen := false
	for _, row := range others {
		for _, v := range row {
			seen = seen || v > 0
		}
	}
	if !seen || len(others) != m.Size() {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	writeMatrixTable(tw, m, "other programs' traffic over links the job left idle (eBPF), MB/s", others, func(v float64) string { return fmt.Sprintf("%.0f", v/1e6) })
	return tw.Flush()
}

func writeMatrixTable(w io.Writer, m *Matrix, title string, rows [][]float64, cell func(float64) string) {
	fmt.Fprintf(w, "%s, row to column:\n", title)
	var b strings.Builder
	b.WriteString("\t")
	for j := range rows {
		fmt.Fprintf(&b, "%d\t", j)
	}
	fmt.Fprintln(w, b.String())
	for i, row := range rows {
		b.Reset()
		b.WriteString(rankLabel(m, i) + "\t")
		for j, v := range row {
			if i == j {
				b.WriteString("-\t")
			} else {
				b.WriteString(cell(v) + "\t")
			}
		}
		fmt.Fprintln(w, b.String())
	}
}

// WriteHeatMap draws the bandwidth as a heat map in MB/s, rows sending to
// columns with rank 0 at the top left, a colour bar beside it, and, if
// ring is not empty, a ring around each cell the ring sends over; it
// writes a PNG of width × height pixels.
func WriteHeatMap(w io.Writer, m *Matrix, ring []int, width, height int) error {
	n := m.Size()
	if n == 0 {
		return errors.New("matrix has no ranks")
	}
	if width < 100 || height < 100 {
		return fmt.Errorf("a %d×%d heat map is too small to read; want at least 100×100 pixels", width, height)
	}
	grid := heatGrid{m}
	lo, hi := math.Inf(1), math.Inf(-1)
	for i := range n {
		for j := range n {
			if i != j {
				lo, hi = math.Min(lo, grid.mbps(i, j)), math.Max(hi, grid.mbps(i, j))
			}
		}
	}
	if n == 1 {
		lo, hi = 0, 0
	}
	if hi <= lo { // a flat matrix still needs a range to colour
		hi = lo + 1
	}
	cmap := moreland.ExtendedBlackBody() // dark is slow
	cmap.SetMin(lo)
	cmap.SetMax(hi)

	p := plot.New()
	p.Title.Text = "bandwidth MB/s, row to column"
	if len(ring) > 1 {
		p.Title.Text += fmt.Sprintf("; circled: the ring, bottleneck %.0f MB/s", Bottleneck(m, ring)/1e6)
	}
	hm := plotter.NewHeatMap(grid, cmap.Palette(255))
	hm.Min, hm.Max = lo, hi
	hm.NaN = color.Gray{Y: 200}
	p.Add(hm)
	if len(ring) > 1 {
		pts := make(plotter.XYs, len(ring))
		for k, a := range ring {
			b := ring[(k+1)%len(ring)]
			pts[k] = plotter.XY{X: float64(b), Y: float64(n - 1 - a)}
		}
		s, err := plotter.NewScatter(pts)
		if err != nil {
			return err
		}
		s.GlyphStyle = draw.GlyphStyle{Shape: draw.RingGlyph{}, Color: color.RGBA{G: 200, B: 255, A: 255},
			Radius: vg.Length(float64(height) / float64(4*n+8))}
		p.Add(s)
	}
	labels := make([]string, n)
	for i := range labels {
		labels[i] = rankLabel(m, i)
	}
	p.NominalX(labels...)
	rev := make([]string, n)
	for i := range rev {
		rev[i] = labels[n-1-i]
	}
	p.NominalY(rev...)
	p.X.Label.Text, p.Y.Label.Text = "to", "from"

	bar := plot.New()
	bar.Add(&plotter.ColorBar{ColorMap: cmap, Vertical: true})
	bar.HideX()
	bar.Y.Padding = 0
	bar.Title.Text = "MB/s"

	const dpi = 96
	img := vgimg.NewWith(vgimg.UseWH(vg.Length(width)*vg.Inch/dpi, vg.Length(height)*vg.Inch/dpi), vgimg.UseDPI(dpi))
	dc := draw.New(img)
	barWidth := dc.Max.X / 6
	p.Draw(draw.Crop(dc, 0, -barWidth, 0, 0))
	bar.Draw(draw.Crop(dc, dc.Max.X-barWidth, 0, 0, 0))
	_, err := vgimg.PngCanvas{Canvas: img}.WriteTo(w)
	return err
}

// heatGrid shows a matrix with row 0 at the top: the plot's y axis grows
// upwards, so grid row r is matrix row n-1-r.
type heatGrid struct{ m *Matrix }

func (g heatGrid) mbps(i, j int) float64 { return g.m.Bandwidth[i][j] / 1e6 }
func (g heatGrid) Dims() (c, r int)      { return g.m.Size(), g.m.Size() }
func (g heatGrid) X(c int) float64       { return float64(c) }
func (g heatGrid) Y(r int) float64       { return float64(r) }
func (g heatGrid) Z(c, r int) float64 {
	i := g.m.Size() - 1 - r
	if i == c {
		return math.NaN() // the diagonal is unused
	}
	return g.mbps(i, c)
}
