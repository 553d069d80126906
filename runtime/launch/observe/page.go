package observe

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"html/template"
	"net/http"
)

// page.html is the status page: plain HTML, CSS and a few lines of JS
// that render a Status and poll /status.json for the next one. The first
// Status is in the page itself, so the page renders without a request.
//
//go:embed page.html
var pageHTML string

var pageTmpl = template.Must(template.New("page").Parse(pageHTML))

func (s *Server) servePage(w http.ResponseWriter, r *http.Request) {
	var b bytes.Buffer
	if err := pageTmpl.Execute(&b, s.Status()); err != nil {
		http.Error(w, "rendering the status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b.Bytes())
}

func (s *Server) serveJSON(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, s.Status(), "the status")
}

// writeJSON answers with v as JSON, never cached; what names v in the
// error when it cannot be encoded.
func writeJSON(w http.ResponseWriter, v any, what string) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encoding "+what+": "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b)
}

// serveTopology serves the job's live link matrix, ring and re-plans
// (what `ringo topo show --metrics-addr` prints), or 404 where the job
// has none.
func (s *Server) serveTopology(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	t := s.latest.Topology
	s.mu.Unlock()
	if t == nil {
		http.Error(w, "this job has no live topology: it needs more than one node, --topology probe and Go workers (runtime.Init)", http.StatusNotFound)
		return
	}
	writeJSON(w, t, "the topology")
}
