package ringo_test

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// The layers of DESIGN.md, top to bottom. A package may import packages of
// its own layer's subtree or of layers below it, never above: collective
// knows nothing of the launcher, device and topology import nothing of ours
// but internal, and nothing imports cmd.
var layers = []string{
	"cmd",
	"examples",
	"runtime",
	"checkpoint dataloader diloco",
	"collective",
	"device topology",
	"internal",
}

const module = "github.com/ringo-ml/ringo"

func layerOf(pkg string) (int, string) {
	rel := strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")
	top, _, _ := strings.Cut(rel, "/")
	for i, l := range layers {
		for _, name := range strings.Fields(l) {
			if top == name {
				return i, top
			}
		}
	}
	return -1, top
}

func TestDependenciesPointDown(t *testing.T) {
	out, err := exec.Command("go", "list", "-json=ImportPath,Imports", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	checked := 0
	for dec.More() {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		from, fromTop := layerOf(p.ImportPath)
		if from < 0 {
			continue // scripts and the like: tools, not the library
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			to, toTop := layerOf(imp)
			checked++
			switch {
			case to < 0:
				t.Errorf("%s imports %s, which is outside the layered tree", p.ImportPath, imp)
			case to < from:
				t.Errorf("%s (layer %q) imports %s (layer %q, above it): dependencies must point down", p.ImportPath, layers[from], imp, layers[to])
			case to == from && toTop != fromTop:
				t.Errorf("%s imports its sibling %s: %s and %s must stay independent", p.ImportPath, imp, fromTop, toTop)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no imports between ringo packages were checked; is go list working?")
	}
}
