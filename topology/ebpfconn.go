package topology

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
)

// Per-connection counters: the programs that count TCPCounts system-wide
// count the same again under the connection's addresses, read from the
// socket the tracepoint names, in an LRU hash of maxConns connections
// (the least recently counted are dropped first). A launcher reads them
// for the connections of its own job, whatever program opened them: a
// PyTorch worker's Gloo sockets as well as ringo's.

// TCPConn is one TCP connection seen from one of its sockets: Local is
// that socket's address.
type TCPConn struct {
	Local, Remote netip.AddrPort
}

const (
	maxConns    = 16384
	connKeySize = 12 // daddr, rcv_saddr (network order), dport (network order), num (host order)
)

// The stack slots of the per-connection code, clear of those the
// programs use before it (-4 for the array's key, -16 for the RTT).
const (
	stackConnKey   = -64 // connKeySize bytes
	stackConnValue = -96 // connValueSize bytes of zeros, for a new entry
	stackAcked     = -24 // 8 bytes: the connection's bytes_acked
)

// connValueSize is the per-connection value: tcpConnValue.
const connValueSize = 32

// tcpConnValue is a connection's entry: the system-wide counters' fields
// and then the connection's bytes acknowledged.
type tcpConnValue struct {
	Retransmits, Segments, SRTTSumUS, BytesAcked uint64
}

// offBytesAcked is tcpConnValue.BytesAcked's byte offset.
const offBytesAcked = 24

// sockAddrs are the byte offsets in struct sock (its __sk_common) of what
// the key holds, from the kernel's BTF.
type sockAddrs struct {
	daddr, saddr, dport, num int
}

// sockAddrOffsets reads sockAddrs from the running kernel's BTF.
func sockAddrOffsets() (sockAddrs, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return sockAddrs{}, fmt.Errorf("kernel BTF: %w", err)
	}
	var sk, common *btf.Struct
	if err := spec.TypeByName("sock", &sk); err != nil {
		return sockAddrs{}, fmt.Errorf("kernel BTF: %w", err)
	}
	if err := spec.TypeByName("sock_common", &common); err != nil {
		return sockAddrs{}, fmt.Errorf("kernel BTF: %w", err)
	}
	base, ok := memberOffset(sk.Members, "__sk_common")
	if !ok {
		return sockAddrs{}, errors.New("kernel BTF: struct sock has no __sk_common")
	}
	var out sockAddrs
	for _, f := range []struct {
		name string
		dst  *int
	}{{"skc_daddr", &out.daddr}, {"skc_rcv_saddr", &out.saddr}, {"skc_dport", &out.dport}, {"skc_num", &out.num}} {
		off, ok := memberOffset(common.Members, f.name)
		if !ok {
			return sockAddrs{}, fmt.Errorf("kernel BTF: struct sock_common has no %s", f.name)
		}
		*f.dst = base + off
	}
	return out, nil
}

// connCounter emits the per-connection part of a program; fd < 0: none.
type connCounter struct {
	fd    int
	addrs sockAddrs
	acked int // tcp_sock.bytes_acked's offset; < 0: unknown, not stored
}

var connNone = connCounter{fd: -1, acked: -1}

// entry emits: r8 = this connection's entry (sk in r6), made if missing,
// or jump to "exit" for a socket without an IPv4 peer (or where the
// addresses cannot be read, or the map is full of busier entries).
func (c connCounter) entry() asm.Instructions {
	if c.fd < 0 {
		return nil
	}
	insns := asm.Instructions{
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.RFP, stackConnKey, asm.R1, asm.DWord),
		asm.StoreMem(asm.RFP, stackConnKey+8, asm.R1, asm.DWord),
	}
	for _, f := range []struct{ at, size, off int }{
		{0, 4, c.addrs.daddr}, {4, 4, c.addrs.saddr}, {8, 2, c.addrs.dport}, {10, 2, c.addrs.num},
	} {
		insns = append(insns,
			asm.Mov.Reg(asm.R1, asm.RFP),
			asm.Add.Imm(asm.R1, int32(stackConnKey+f.at)),
			asm.Mov.Imm(asm.R2, int32(f.size)),
			asm.Mov.Reg(asm.R3, asm.R6),
			asm.Add.Imm(asm.R3, int32(f.off)),
			asm.FnProbeReadKernel.Call(),
			asm.JNE.Imm(asm.R0, 0, "exit"),
		)
	}
	lookup := asm.Instructions{
		asm.LoadMapPtr(asm.R1, c.fd),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stackConnKey),
		asm.FnMapLookupElem.Call(),
	}
	insns = append(insns,
		asm.LoadMem(asm.R1, asm.RFP, stackConnKey, asm.Word),
		asm.JEq.Imm(asm.R1, 0, "exit"), // no IPv4 peer
	)
	insns = append(insns, lookup...)
	insns = append(insns,
		asm.JNE.Imm(asm.R0, 0, "conn_found"),
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.RFP, stackConnValue, asm.R1, asm.DWord),
		asm.StoreMem(asm.RFP, stackConnValue+8, asm.R1, asm.DWord),
		asm.StoreMem(asm.RFP, stackConnValue+16, asm.R1, asm.DWord),
		asm.StoreMem(asm.RFP, stackConnValue+24, asm.R1, asm.DWord),
		asm.LoadMapPtr(asm.R1, c.fd),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stackConnKey),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, stackConnValue),
		asm.Mov.Imm(asm.R4, 1), // BPF_NOEXIST: another CPU may have made it meanwhile
		asm.FnMapUpdateElem.Call(),
	)
	insns = append(insns, lookup...)
	return append(insns,
		asm.JEq.Imm(asm.R0, 0, "exit"),
		asm.Mov.Reg(asm.R8, asm.R0).WithSymbol("conn_found"),
	)
}

// ConnsErr says why Conns is empty, or is nil when connections are
// counted.
func (c *TCPCounters) ConnsErr() error { return c.connsErr }

// AckedErr says why Conns' BytesAcked stay 0 where connections are
// counted (ConnsErr is nil), or is nil.
func (c *TCPCounters) AckedErr() error { return c.ackedErr }

// Conns returns the counters of every IPv4 TCP connection that
// retransmitted or received a segment since the counters started (of
// every network namespace: a connection is named by its addresses only),
// up to the most recent 16384.
func (c *TCPCounters) Conns() (map[TCPConn]TCPCounts, error) {
	if c.conns == nil {
		return nil, c.connsErr
	}
	out := map[TCPConn]TCPCounts{}
	var key [connKeySize]byte
	var v tcpConnValue
	it := c.conns.Iterate()
	for it.Next(&key, &v) {
		out[connOf(key)] = TCPCounts{Retransmits: v.Retransmits, Segments: v.Segments, SRTTSumUS: v.SRTTSumUS, BytesAcked: v.BytesAcked}
	}
	// An iteration the kernel's churn of entries cut short still holds
	// what it read: counters, not a census.
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrIterationAborted) {
		return nil, fmt.Errorf("reading the per-connection TCP counters: %w", err)
	}
	return out, nil
}

// connOf decodes a key: the socket's peer (daddr, dport) is Remote, its
// own address (rcv_saddr, num) Local.
func connOf(k [connKeySize]byte) TCPConn {
	remote := netip.AddrFrom4([4]byte(k[0:4]))
	local := netip.AddrFrom4([4]byte(k[4:8]))
	return TCPConn{
		Local:  netip.AddrPortFrom(local, binary.NativeEndian.Uint16(k[10:12])),
		Remote: netip.AddrPortFrom(remote, binary.BigEndian.Uint16(k[8:10])),
	}
}
