package proctest

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// FreeAddr returns a loopback address ("127.0.0.1:port") that nothing
// listens on, for a server a test starts after choosing its address (a
// rendezvous every rank must know in advance).
//
// The port is drawn from below the kernel's ephemeral range: a port the
// kernel handed out for ":0" goes back into that range once the probe
// closes, where any outgoing connection of a test running beside this one
// may take it before the server binds it ("address already in use").
// Outgoing connections never take a port below the range.
func FreeAddr(t testing.TB) string {
	t.Helper()
	lo := ephemeralLow()
	const floor = 10000
	for range 200 {
		port := floor + rand.IntN(lo-floor)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		ln.Close()
		return addr
	}
	t.Fatalf("no free loopback port between %d and %d after 200 tries", floor, lo)
	return ""
}

// ephemeralLow is the first port of the kernel's ephemeral range (32768
// where the range cannot be read, Linux's default).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) < 1 {
		return 32768
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil || lo < 12000 {
		return 32768
	}
	return lo
}
