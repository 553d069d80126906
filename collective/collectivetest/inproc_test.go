package collectivetest_test

import (
	"testing"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/collectivetest"
	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/collective/transport/inproc"
)

// inprocGroup forms a group of n ranks over the in-process transport.
func inprocGroup(t testing.TB, n int, cfg collective.Config) collectivetest.Group {
	t.Helper()
	w := inproc.NewWorld(n)
	trs := make([]transport.Transport, n)
	for r := range trs {
		trs[r] = w.Transport(r)
	}
	return collectivetest.Form(t, cfg, trs, w.Kill)
}

func TestInproc(t *testing.T) {
	collectivetest.Run(t, inprocGroup)
}
