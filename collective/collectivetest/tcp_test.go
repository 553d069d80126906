package collectivetest_test

import (
	"testing"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/collectivetest"
	"github.com/ringo-ml/ringo/collective/transport/tcp"
)

// Messages from 1000 bytes up are striped over three sockets per peer, so
// that the striping paths (and stripes that do not divide the message
// evenly) meet the whole matrix.
func tcpGroup(t testing.TB, n int, cfg collective.Config) collectivetest.Group {
	return collectivetest.TCP(t, n, cfg, func(c *tcp.Config) { c.SocketsPerPeer, c.StripeMin = 3, 1000 })
}

func TestTCP(t *testing.T) {
	collectivetest.RunQuick(t, tcpGroup)
}
