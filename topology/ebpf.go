package topology

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
)

// ErrEBPFUnavailable is wrapped by StartTCPCounters' error when this
// process may not, or this kernel cannot, run the counters: not root, a
// locked-down kernel, no BPF, a missing tracepoint. The error says which;
// the caller should carry on with ReadTCPInfo, which needs none of it.
var ErrEBPFUnavailable = errors.New("eBPF TCP counters unavailable")

// TCPCounts are system-wide TCP counters, all connections of all network
// namespaces together, since the counters were started.
type TCPCounts struct {
	// Retransmits counts calls of the tcp_retransmit_skb tracepoint:
	// retransmitted packets. A TSO packet counts once however many
	// segments it holds, so it can be less than the sum of TCP_INFO's
	// per-connection Retransmits.
	Retransmits uint64
	// Segments counts the tcp_probe tracepoint: segments that arrived on
	// established connections. 0 when tcp_probe is not attached (see
	// TCPCounters.RTTErr).
	Segments uint64
	// SRTTSumUS sums, over those segments, the receiving connection's
	// smoothed RTT in microseconds; see MeanRTT. 0 when the kernel's BTF
	// did not say where tcp_sock keeps it.
	SRTTSumUS uint64
	// BytesAcked is, per connection only (Conns), the bytes it sent that
	// its peer acknowledged (tcp_sock.bytes_acked) as of the last
	// segment it received: a connection that sends gets acknowledgements,
	// so this keeps up with it. 0 in Read's machine-wide sums, and where
	// the kernel's BTF did not say where tcp_sock keeps it.
	BytesAcked uint64
}

// Sub returns the counts accumulated since prev, to turn two reads into
// the rate of an interval.
func (c TCPCounts) Sub(prev TCPCounts) TCPCounts {
	return TCPCounts{c.Retransmits - prev.Retransmits, c.Segments - prev.Segments, c.SRTTSumUS - prev.SRTTSumUS, c.BytesAcked - prev.BytesAcked}
}

// MeanRTT is the smoothed RTT averaged over arriving segments: busy
// connections weigh more, as they should for a training job's links.
func (c TCPCounts) MeanRTT() time.Duration {
	if c.Segments == 0 {
		return 0
	}
	return time.Duration(c.SRTTSumUS/c.Segments) * time.Microsecond
}

// TCPCounters are the eBPF programs behind TCPCounts, attached to raw
// tracepoints (which load where kprobes are compiled out, as on the CI
// kernel). Close detaches them.
type TCPCounters struct {
	counts *ebpf.Map
	// conns holds the same counters per connection (Conns); nil where
	// the kernel's BTF does not say where a socket keeps its addresses,
	// or the map could not be made (connsErr says why).
	conns    *ebpf.Map
	connsErr error
	ackedErr error // why BytesAcked stays 0 where connections are counted
	progs    []*ebpf.Program
	links    []link.Link
	rttErr   error
}

// The per-CPU value the programs add to: one slot per CPU, so the hot
// path never shares a cache line, summed by Read.
type tcpCountsValue struct {
	Retransmits, Segments, SRTTSumUS uint64
}

// Byte offsets of tcpCountsValue's fields, for the BPF programs.
const (
	offRetransmits = 0
	offSegments    = 8
	offSRTTSum     = 16
)

// StartTCPCounters loads and attaches the counters. It needs root (or
// CAP_BPF with CAP_PERFMON); any failure to load or attach the
// tcp_retransmit_skb counter returns an error wrapping
// ErrEBPFUnavailable and the reason. tcp_probe is best effort: without
// it the counters still run and RTTErr says why.
//
// On kernels older than 5.11 it raises RLIMIT_MEMLOCK, which BPF maps
// were charged against then.
func StartTCPCounters() (*TCPCounters, error) {
	// Only kernels before 5.11 need this, and only root may do it; if it
	// fails, creating the map says whether it mattered.
	memlockErr := rlimit.RemoveMemlock()
	unavailable := func(what string, err error) error {
		hint := ""
		if errors.Is(err, os.ErrPermission) {
			hint = fmt.Sprintf(" (needs root or CAP_BPF+CAP_PERFMON; euid is %d)", os.Geteuid())
			if memlockErr != nil && os.Geteuid() == 0 {
				hint = fmt.Sprintf(" (RLIMIT_MEMLOCK too low? raising it failed: %v)", memlockErr)
			}
		}
		return fmt.Errorf("%w: %s%s: %w", ErrEBPFUnavailable, what, hint, err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "ringo_tcp", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 24, MaxEntries: 1,
	})
	if err != nil {
		return nil, unavailable("creating a BPF map", err)
	}
	c := &TCPCounters{counts: m}
	// Per connection, where the kernel says where a socket keeps its
	// addresses; reading them needs bpf_probe_read_kernel, so the
	// retransmit counter is GPL-compatible too then.
	conn := connNone
	if addrs, err := sockAddrOffsets(); err != nil {
		c.connsErr = fmt.Errorf("no per-connection counters: %w", err)
	} else if cm, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "ringo_tcp_conns", Type: ebpf.LRUHash, KeySize: connKeySize, ValueSize: connValueSize, MaxEntries: maxConns,
	}); err != nil {
		c.connsErr = fmt.Errorf("no per-connection counters: creating their BPF map: %w", err)
	} else {
		c.conns, conn = cm, connCounter{fd: cm.FD(), addrs: addrs, acked: -1}
		if off, err := tcpSockOffset("bytes_acked"); err == nil {
			conn.acked = off
		} else {
			c.ackedErr = fmt.Errorf("no bytes acknowledged per connection: %w", err)
		}
	}
	license := "Apache-2.0"
	if c.conns != nil {
		license = "Dual MIT/GPL"
	}
	err = c.attach("tcp_retransmit_skb", retransmitProgram(m.FD(), conn), license)
	if err != nil && c.conns != nil {
		// A kernel that refuses the longer program still gets the
		// machine's counters.
		c.dropConns(err)
		conn = connNone
		err = c.attach("tcp_retransmit_skb", retransmitProgram(m.FD(), conn), "Apache-2.0")
	}
	if err != nil {
		c.Close()
		return nil, unavailable("tracepoint tcp_retransmit_skb", err)
	}
	off, oerr := tcpSockOffset("srtt_us")
	if oerr != nil {
		c.rttErr = fmt.Errorf("no RTT (segments are still counted): %w", oerr)
		off = -1
	}
	// bpf_probe_read_kernel, which reads the RTT, is for GPL-compatible
	// programs only; this one is a few dozen instructions built below.
	err = c.attach("tcp_probe", probeProgram(m.FD(), off, conn), "Dual MIT/GPL")
	if err != nil && conn.acked >= 0 {
		c.ackedErr = fmt.Errorf("no bytes acknowledged per connection: the kernel refused the program that stores them: %w", err)
		conn.acked = -1
		err = c.attach("tcp_probe", probeProgram(m.FD(), off, conn), "Dual MIT/GPL")
	}
	if err != nil && c.conns != nil {
		c.dropConns(err)
		err = c.attach("tcp_probe", probeProgram(m.FD(), off, connNone), "Dual MIT/GPL")
	}
	if err != nil {
		c.rttErr = fmt.Errorf("tracepoint tcp_probe not attached: %w", err)
		if c.ackedErr == nil {
			// The program that stores them is the one that did not load.
			c.ackedErr = fmt.Errorf("no bytes acknowledged per connection: %w", c.rttErr)
		}
	}
	return c, nil
}

// dropConns gives up the per-connection counters for why. A program
// attached already with them goes on adding to their map, which nobody
// reads.
func (c *TCPCounters) dropConns(why error) {
	c.connsErr = fmt.Errorf("no per-connection counters: the kernel refused the programs that count them: %w", why)
	c.conns.Close()
	c.conns = nil
}

func (c *TCPCounters) attach(tracepoint string, insns asm.Instructions, license string) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "ringo_" + tracepoint, Type: ebpf.RawTracepoint, Instructions: insns, License: license,
	})
	if err != nil {
		return fmt.Errorf("loading the program: %w", err)
	}
	c.progs = append(c.progs, prog)
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: tracepoint, Program: prog})
	if err != nil {
		return fmt.Errorf("attaching: %w", err)
	}
	c.links = append(c.links, l)
	return nil
}

// RTTErr says why Segments or SRTTSumUS stay 0, or is nil when both are
// counted.
func (c *TCPCounters) RTTErr() error { return c.rttErr }

// Read sums the counters over all CPUs.
func (c *TCPCounters) Read() (TCPCounts, error) {
	var perCPU []tcpCountsValue
	if err := c.counts.Lookup(uint32(0), &perCPU); err != nil {
		return TCPCounts{}, fmt.Errorf("reading the TCP counters: %w", err)
	}
	var sum TCPCounts
	for _, v := range perCPU {
		sum.Retransmits += v.Retransmits
		sum.Segments += v.Segments
		sum.SRTTSumUS += v.SRTTSumUS
	}
	return sum, nil
}

// Close detaches the programs and frees the map.
func (c *TCPCounters) Close() error {
	var errs []error
	for _, l := range c.links {
		errs = append(errs, l.Close())
	}
	for _, p := range c.progs {
		errs = append(errs, p.Close())
	}
	c.links, c.progs = nil, nil
	errs = append(errs, c.counts.Close())
	if c.conns != nil {
		errs = append(errs, c.conns.Close())
	}
	return errors.Join(errs...)
}

// lookupCounts emits: r0 = &counts[0] for this CPU, or jump to "exit"
// if the lookup fails (it cannot for an array, but the verifier insists).
func lookupCounts(mapFD int) asm.Instructions {
	return asm.Instructions{
		asm.StoreImm(asm.RFP, -4, 0, asm.Word), // key 0 on the stack
		asm.LoadMapPtr(asm.R1, mapFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "exit"),
	}
}

// exit returns 0, as raw tracepoint programs must.
var exit = asm.Instructions{
	asm.Mov.Imm(asm.R0, 0).WithSymbol("exit"),
	asm.Return(),
}

// retransmitProgram counts calls: counts.Retransmits++. The add is atomic
// although the slot is per-CPU, because a softirq can run the tcp_probe
// program on this CPU in the middle of it.
func retransmitProgram(mapFD int, conn connCounter) asm.Instructions {
	insns := asm.Instructions{
		asm.LoadMem(asm.R6, asm.R1, 0, asm.DWord), // r6 = args[0] = sk
	}
	insns = append(insns, lookupCounts(mapFD)...)
	insns = append(insns,
		asm.Mov.Imm(asm.R1, 1),
		asm.AddAtomic.Mem(asm.R0, asm.R1, asm.DWord, offRetransmits),
	)
	insns = append(insns, conn.entry()...)
	if conn.fd >= 0 {
		insns = append(insns,
			asm.Mov.Imm(asm.R1, 1),
			asm.AddAtomic.Mem(asm.R8, asm.R1, asm.DWord, offRetransmits),
		)
	}
	return append(insns, exit...)
}

// probeProgram counts tcp_probe(struct sock *sk, struct sk_buff *skb)
// and, when srttOff >= 0, adds sk's tcp_sock.srtt_us >> 3 (the kernel
// keeps it scaled by 8) to counts.SRTTSumUS; the same to sk's entry of
// the per-connection counters.
func probeProgram(mapFD, srttOff int, conn connCounter) asm.Instructions {
	insns := asm.Instructions{
		asm.LoadMem(asm.R6, asm.R1, 0, asm.DWord), // r6 = args[0] = sk
	}
	insns = append(insns, lookupCounts(mapFD)...)
	insns = append(insns,
		asm.Mov.Reg(asm.R7, asm.R0), // r7 survives the helper call below
		asm.Mov.Imm(asm.R1, 1),
		asm.AddAtomic.Mem(asm.R7, asm.R1, asm.DWord, offSegments),
		asm.Mov.Imm(asm.R9, 0), // the RTT in µs, for the connection's entry
	)
	if srttOff >= 0 {
		insns = append(insns,
			asm.StoreImm(asm.RFP, -16, 0, asm.Word), // the helper writes here
			asm.Mov.Reg(asm.R1, asm.RFP),
			asm.Add.Imm(asm.R1, -16),
			asm.Mov.Imm(asm.R2, 4),
			asm.Mov.Reg(asm.R3, asm.R6),
			asm.Add.Imm(asm.R3, int32(srttOff)),
			asm.FnProbeReadKernel.Call(),
			asm.JNE.Imm(asm.R0, 0, "exit"),
			asm.LoadMem(asm.R1, asm.RFP, -16, asm.Word),
			asm.RSh.Imm(asm.R1, 3),
			asm.Mov.Reg(asm.R9, asm.R1),
			asm.AddAtomic.Mem(asm.R7, asm.R1, asm.DWord, offSRTTSum),
		)
	}
	insns = append(insns, conn.entry()...)
	if conn.fd >= 0 {
		insns = append(insns,
			asm.Mov.Imm(asm.R1, 1),
			asm.AddAtomic.Mem(asm.R8, asm.R1, asm.DWord, offSegments),
			asm.AddAtomic.Mem(asm.R8, asm.R9, asm.DWord, offSRTTSum),
		)
		if conn.acked >= 0 {
			// A plain store of the latest value: two CPUs racing on one
			// connection's segments can leave the older of two close
			// values, which the next segment mends.
			insns = append(insns,
				asm.Mov.Reg(asm.R1, asm.RFP),
				asm.Add.Imm(asm.R1, stackAcked),
				asm.Mov.Imm(asm.R2, 8),
				asm.Mov.Reg(asm.R3, asm.R6),
				asm.Add.Imm(asm.R3, int32(conn.acked)),
				asm.FnProbeReadKernel.Call(),
				asm.JNE.Imm(asm.R0, 0, "exit"),
				asm.LoadMem(asm.R1, asm.RFP, stackAcked, asm.DWord),
				asm.StoreMem(asm.R8, offBytesAcked, asm.R1, asm.DWord),
			)
		}
	}
	return append(insns, exit...)
}

// tcpSockOffset finds a member of tcp_sock (srtt_us, bytes_acked) in
// this kernel's BTF: struct layouts change between kernels and configs,
// and there is no clang here to do CO-RE relocations, so the offset is
// looked up at start.
func tcpSockOffset(name string) (int, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return 0, fmt.Errorf("kernel BTF: %w", err)
	}
	var tcpSock *btf.Struct
	if err := spec.TypeByName("tcp_sock", &tcpSock); err != nil {
		return 0, fmt.Errorf("kernel BTF: %w", err)
	}
	off, ok := memberOffset(tcpSock.Members, name)
	if !ok {
		return 0, fmt.Errorf("kernel BTF: struct tcp_sock has no %s", name)
	}
	return off, nil
}

// memberOffset finds a member's byte offset, looking inside anonymous
// structs and unions too.
func memberOffset(members []btf.Member, name string) (int, bool) {
	for _, m := range members {
		if m.Name == name && m.BitfieldSize == 0 && m.Offset%8 == 0 {
			return int(m.Offset / 8), true
		}
		if m.Name != "" {
			continue
		}
		var inner []btf.Member
		switch t := btf.UnderlyingType(m.Type).(type) {
		case *btf.Struct:
			inner = t.Members
		case *btf.Union:
			inner = t.Members
		}
		if off, ok := memberOffset(inner, name); ok {
			return int(m.Offset/8) + off, true
		}
	}
	return 0, false
}
