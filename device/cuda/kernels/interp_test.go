package kernels_test

// A small PTX interpreter for exactly the subset package kernels emits. It
// parses a module (header directives, .visible .entry with its .param list,
// .reg declarations, labels, instructions with an optional @%p / @!%p
// guard) and runs a kernel over a simulated grid on a byte-slice global
// memory. It doubles as a validator: an unknown directive, instruction,
// modifier or type suffix, an undeclared register, a register of the wrong
// type or width for its instruction, an immediate where the subset has
// none, a branch to an unknown label, a misaligned or out-of-bounds access
// and a register read before it is written are all errors.
//
// Where a GPU and Go differ, it does what the GPU does: a floating-point
// add, mul or div whose result is NaN yields the canonical NaN 0x7fffffff
// (float64: 0x7fffffffffffffff), whatever the operands' NaNs were. Shift
// amounts past the register width clamp to the width, as PTX says.

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
)

// ---------------------------------------------------------------------------
// Types.

type ptxType struct {
	kind byte // 'b', 'u', 's', 'f', or 'p' for .pred
	bits int
}

func (t ptxType) String() string {
	if t.kind == 'p' {
		return ".pred"
	}
	return fmt.Sprintf(".%c%d", t.kind, t.bits)
}

func (t ptxType) isInt() bool { return t.kind == 'b' || t.kind == 'u' || t.kind == 's' }

func (t ptxType) mask() uint64 {
	if t.bits >= 64 {
		return math.MaxUint64
	}
	return 1<<t.bits - 1
}

// parseType parses a type suffix without its dot: u32, f64, pred...
func parseType(s string) (ptxType, bool) {
	if s == "pred" {
		return ptxType{'p', 1}, true
	}
	if len(s) < 2 || !strings.ContainsRune("busf", rune(s[0])) {
		return ptxType{}, false
	}
	bits, err := strconv.Atoi(s[1:])
	if err != nil || (bits != 16 && bits != 32 && bits != 64) {
		return ptxType{}, false
	}
	if s[0] == 'f' && bits == 16 {
		return ptxType{}, false // half arithmetic is not in the subset
	}
	return ptxType{s[0], bits}, true
}

// compatible is PTX's operand type check: an instruction of type it may
// use a register of type rt when they have the same size and a bit type
// is involved or both are integers or both are floats.
func compatible(it, rt ptxType) bool {
	if it.kind == 'p' || rt.kind == 'p' {
		return it.kind == rt.kind
	}
	if it.bits != rt.bits {
		return false
	}
	switch it.kind {
	case 'b':
		return true
	case 'u', 's':
		return rt.isInt()
	case 'f':
		return rt.kind == 'f' || rt.kind == 'b'
	}
	return false
}

// ---------------------------------------------------------------------------
// Tokens.

type token struct {
	s    string
	line int
}

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_.$%", c) >= 0
}

func tokenize(src string) ([]token, error) {
	var toks []token
	line := 1
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == '\n':
			line++
			i++
		case c == ' ' || c == '\t' || c == '\r':
			i++
		case strings.HasPrefix(src[i:], "//"):
			for i < len(src) && src[i] != '\n' {
				i++
			}
		case strings.IndexByte("(){}[],;:<>@!+", c) >= 0:
			toks = append(toks, token{src[i : i+1], line})
			i++
		case isWordByte(c) || c == '-':
			j := i + 1
			for j < len(src) && isWordByte(src[j]) {
				j++
			}
			toks = append(toks, token{src[i:j], line})
			i = j
		default:
			return nil, fmt.Errorf("line %d: unexpected character %q", line, c)
		}
	}
	return toks, nil
}

// ---------------------------------------------------------------------------
// The module.

type Module struct {
	Version, Target, AddressSize string
	Entries                      map[string]*Entry
	Order                        []string // entry names in source order
}

type Param struct {
	Name string
	Type ptxType
}

type regInfo struct {
	idx int
	typ ptxType
}

type Entry struct {
	Name   string
	Params []Param
	regs   map[string]regInfo
	nregs  int
	labels map[string]int
	code   []instr
	// Ops counts the instructions by opcode, modifiers included.
	Ops map[string]int
}

type instr struct {
	line  int
	text  string
	guard int // register index of the guard, or -1
	neg   bool
	run   func(t *thread) error
}

// rawInstr is an instruction as parsed, before it is checked.
type rawInstr struct {
	line     int
	guard    string
	neg      bool
	opcode   string
	operands []operand
}

type operandKind int

const (
	opReg  operandKind = iota // %name
	opImm                     // integer literal
	opName                    // label or parameter name
	opMem                     // [base] or [base+offset]
)

type operand struct {
	kind operandKind
	text string
	base string // opMem: a register or a parameter name
	off  int64  // opMem
}

type parser struct {
	toks []token
	pos  int
}

func (p *parser) eof() bool { return p.pos >= len(p.toks) }

func (p *parser) peek() string {
	if p.eof() {
		return ""
	}
	return p.toks[p.pos].s
}

func (p *parser) line() int {
	if p.eof() {
		if len(p.toks) == 0 {
			return 0
		}
		return p.toks[len(p.toks)-1].line
	}
	return p.toks[p.pos].line
}

func (p *parser) next() string {
	s := p.peek()
	p.pos++
	return s
}

func (p *parser) expect(s string) error {
	if got := p.peek(); got != s {
		return fmt.Errorf("line %d: want %q, got %q", p.line(), s, got)
	}
	p.pos++
	return nil
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	c := s[0]
	if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '$') {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '$') {
			return false
		}
	}
	return true
}

// ParsePTX parses and checks a module.
func ParsePTX(src string) (*Module, error) {
	toks, err := tokenize(src)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks}
	m := &Module{Entries: map[string]*Entry{}}
	for _, d := range []struct {
		name string
		val  *string
	}{{".version", &m.Version}, {".target", &m.Target}, {".address_size", &m.AddressSize}} {
		if err := p.expect(d.name); err != nil {
			return nil, err
		}
		*d.val = p.next()
	}
	if !regexpVersion(m.Version) {
		return nil, fmt.Errorf("bad .version %q", m.Version)
	}
	if m.AddressSize != "64" {
		return nil, fmt.Errorf(".address_size %s: only 64 is in the subset", m.AddressSize)
	}
	for !p.eof() {
		e, err := p.entry()
		if err != nil {
			return nil, err
		}
		if _, dup := m.Entries[e.Name]; dup {
			return nil, fmt.Errorf("entry %s defined twice", e.Name)
		}
		m.Entries[e.Name] = e
		m.Order = append(m.Order, e.Name)
	}
	return m, nil
}

func regexpVersion(v string) bool {
	maj, min, ok := strings.Cut(v, ".")
	_, e1 := strconv.Atoi(maj)
	_, e2 := strconv.Atoi(min)
	return ok && e1 == nil && e2 == nil
}

func (p *parser) entry() (*Entry, error) {
	for _, s := range []string{".visible", ".entry"} {
		if err := p.expect(s); err != nil {
			return nil, err
		}
	}
	e := &Entry{Name: p.next(), regs: map[string]regInfo{}, labels: map[string]int{}, Ops: map[string]int{}}
	if !isIdent(e.Name) {
		return nil, fmt.Errorf("line %d: bad entry name %q", p.line(), e.Name)
	}
	if err := p.expect("("); err != nil {
		return nil, err
	}
	for p.peek() != ")" {
		if len(e.Params) > 0 {
			if err := p.expect(","); err != nil {
				return nil, err
			}
		}
		if err := p.expect(".param"); err != nil {
			return nil, err
		}
		ts := p.next()
		typ, ok := parseType(strings.TrimPrefix(ts, "."))
		if !strings.HasPrefix(ts, ".") || !ok || typ.kind == 'p' {
			return nil, fmt.Errorf("line %d: bad parameter type %q", p.line(), ts)
		}
		name := p.next()
		if !isIdent(name) {
			return nil, fmt.Errorf("line %d: bad parameter name %q", p.line(), name)
		}
		for _, q := range e.Params {
			if q.Name == name {
				return nil, fmt.Errorf("line %d: parameter %s declared twice", p.line(), name)
			}
		}
		e.Params = append(e.Params, Param{name, typ})
	}
	p.next() // ")"
	if err := p.expect("{"); err != nil {
		return nil, err
	}
	// Declarations first, then labels and instructions.
	for p.peek() == ".reg" {
		if err := p.regDecl(e); err != nil {
			return nil, err
		}
	}
	var raws []rawInstr
	for p.peek() != "}" {
		if p.eof() {
			return nil, fmt.Errorf("entry %s: missing }", e.Name)
		}
		if p.pos+1 < len(p.toks) && p.toks[p.pos+1].s == ":" {
			l := p.next()
			p.next()
			if !isIdent(l) {
				return nil, fmt.Errorf("line %d: bad label %q", p.line(), l)
			}
			if _, dup := e.labels[l]; dup {
				return nil, fmt.Errorf("line %d: label %s defined twice", p.line(), l)
			}
			e.labels[l] = len(raws)
			continue
		}
		r, err := p.instruction()
		if err != nil {
			return nil, fmt.Errorf("entry %s: %w", e.Name, err)
		}
		raws = append(raws, r)
	}
	p.next() // "}"
	for _, r := range raws {
		in, err := compile(e, r)
		if err != nil {
			return nil, fmt.Errorf("entry %s, line %d (%s): %w", e.Name, r.line, r.opcode, err)
		}
		e.code = append(e.code, in)
		e.Ops[r.opcode]++
	}
	return e, nil
}

func (p *parser) regDecl(e *Entry) error {
	p.next() // .reg
	ts := p.next()
	typ, ok := parseType(strings.TrimPrefix(ts, "."))
	if !strings.HasPrefix(ts, ".") || !ok {
		return fmt.Errorf("line %d: bad register type %q", p.line(), ts)
	}
	name := p.next()
	if !strings.HasPrefix(name, "%") || !isIdent(name[1:]) {
		return fmt.Errorf("line %d: bad register name %q", p.line(), name)
	}
	n := -1 // a single register
	if p.peek() == "<" {
		p.next()
		v, err := strconv.Atoi(p.next())
		if err != nil || v <= 0 || v > 1<<16 {
			return fmt.Errorf("line %d: bad register count", p.line())
		}
		n = v
		if err := p.expect(">"); err != nil {
			return err
		}
	}
	if err := p.expect(";"); err != nil {
		return err
	}
	add := func(r string) error {
		if _, dup := e.regs[r]; dup || isSpecial(r) {
			return fmt.Errorf("register %s declared twice", r)
		}
		e.regs[r] = regInfo{e.nregs, typ}
		e.nregs++
		return nil
	}
	if n < 0 {
		return add(name)
	}
	for i := range n {
		if err := add(fmt.Sprintf("%s%d", name, i)); err != nil {
			return err
		}
	}
	return nil
}

func (p *parser) instruction() (rawInstr, error) {
	r := rawInstr{line: p.line()}
	if p.peek() == "@" {
		p.next()
		if p.peek() == "!" {
			p.next()
			r.neg = true
		}
		r.guard = p.next()
	}
	r.opcode = p.next()
	if r.opcode == "" || !isWordByte(r.opcode[0]) || strings.HasPrefix(r.opcode, "%") || strings.HasPrefix(r.opcode, ".") {
		return r, fmt.Errorf("line %d: want an instruction, got %q", r.line, r.opcode)
	}
	for p.peek() != ";" {
		if p.eof() {
			return r, fmt.Errorf("line %d: missing ;", r.line)
		}
		if len(r.operands) > 0 {
			if err := p.expect(","); err != nil {
				return r, err
			}
		}
		o, err := p.operand()
		if err != nil {
			return r, err
		}
		r.operands = append(r.operands, o)
	}
	p.next()
	return r, nil
}

func (p *parser) operand() (operand, error) {
	s := p.next()
	switch {
	case s == "[":
		o := operand{kind: opMem, base: p.next()}
		if p.peek() == "+" {
			p.next()
			off, err := strconv.ParseInt(p.next(), 0, 64)
			if err != nil {
				return o, fmt.Errorf("line %d: bad address offset", p.line())
			}
			o.off = off
		}
		if err := p.expect("]"); err != nil {
			return o, err
		}
		o.text = "[" + o.base + "]"
		return o, nil
	case strings.HasPrefix(s, "%"):
		return operand{kind: opReg, text: s}, nil
	case s != "" && (s[0] >= '0' && s[0] <= '9' || s[0] == '-'):
		return operand{kind: opImm, text: s}, nil
	case isIdent(s):
		return operand{kind: opName, text: s}, nil
	}
	return operand{}, fmt.Errorf("line %d: bad operand %q", p.line(), s)
}

// ---------------------------------------------------------------------------
// Checking and compiling instructions into closures.

type thread struct {
	r       []uint64
	set     []bool
	pc      int
	special map[string]uint64
	params  []uint64
	mem     *Memory
}

type valueFn func(t *thread) (uint64, error)

var specialRegs = []string{"%tid.x", "%ntid.x", "%ctaid.x", "%nctaid.x"}

func isSpecial(s string) bool {
	for _, r := range specialRegs {
		if r == s {
			return true
		}
	}
	return false
}

type checker struct {
	e   *Entry
	r   rawInstr
	typ ptxType // the instruction's type
}

func (c *checker) count(n int) error {
	if len(c.r.operands) != n {
		return fmt.Errorf("want %d operands, got %d", n, len(c.r.operands))
	}
	return nil
}

// reg returns the register of operand i, which must have a type
// compatible with t.
func (c *checker) reg(i int, t ptxType) (int, error) {
	o := c.r.operands[i]
	if o.kind != opReg {
		return 0, fmt.Errorf("operand %d (%s) must be a register", i, o.text)
	}
	ri, ok := c.e.regs[o.text]
	if !ok {
		return 0, fmt.Errorf("undeclared register %s", o.text)
	}
	if !compatible(t, ri.typ) {
		return 0, fmt.Errorf("register %s is %v, not usable as %v", o.text, ri.typ, t)
	}
	return ri.idx, nil
}

func readReg(idx int, name string) valueFn {
	return func(t *thread) (uint64, error) {
		if !t.set[idx] {
			return 0, fmt.Errorf("register %s read before it is written", name)
		}
		return t.r[idx], nil
	}
}

// src returns operand i as a value of type t: a register, or an integer
// immediate where immOK.
func (c *checker) src(i int, t ptxType, immOK bool) (valueFn, error) {
	o := c.r.operands[i]
	if o.kind == opImm {
		if !immOK {
			return nil, fmt.Errorf("operand %d (%s): no immediate here in the subset", i, o.text)
		}
		if !t.isInt() {
			return nil, fmt.Errorf("operand %d (%s): integer immediate for a %v instruction", i, o.text, t)
		}
		v, err := parseImm(o.text, t.bits)
		if err != nil {
			return nil, err
		}
		return func(*thread) (uint64, error) { return v, nil }, nil
	}
	idx, err := c.reg(i, t)
	if err != nil {
		return nil, err
	}
	return readReg(idx, o.text), nil
}

// parseImm parses a PTX integer literal (decimal or hex, optional sign and
// U suffix) that must fit in bits, signed or unsigned.
func parseImm(s string, bits int) (uint64, error) {
	neg := strings.HasPrefix(s, "-")
	digits := strings.TrimSuffix(strings.TrimPrefix(s, "-"), "U")
	var v uint64
	var err error
	if strings.HasPrefix(digits, "0x") || strings.HasPrefix(digits, "0X") {
		v, err = strconv.ParseUint(digits[2:], 16, 64)
	} else {
		if len(digits) > 1 && digits[0] == '0' {
			return 0, fmt.Errorf("immediate %s: octal is not in the subset", s)
		}
		v, err = strconv.ParseUint(digits, 10, 64)
	}
	if err != nil {
		return 0, fmt.Errorf("bad immediate %s", s)
	}
	mask := ptxType{'b', bits}.mask()
	if neg {
		if v > 1<<(bits-1) {
			return 0, fmt.Errorf("immediate %s does not fit %d bits", s, bits)
		}
		return -v & mask, nil
	}
	if v&^mask != 0 {
		return 0, fmt.Errorf("immediate %s does not fit %d bits", s, bits)
	}
	return v, nil
}

func set(t *thread, d int, v, mask uint64) {
	t.r[d] = v & mask
	t.set[d] = true
}

// mods splits an opcode into its base and its modifiers.
func mods(opcode string) (string, []string) {
	parts := strings.Split(opcode, ".")
	return parts[0], parts[1:]
}

func oneType(m []string, ok func(ptxType) bool) (ptxType, error) {
	if len(m) != 1 {
		return ptxType{}, fmt.Errorf("unknown modifiers %v", m)
	}
	t, good := parseType(m[0])
	if !good || !ok(t) {
		return ptxType{}, fmt.Errorf("unknown type suffix .%s", m[0])
	}
	return t, nil
}

func isFloat(t ptxType) bool { return t.kind == 'f' }
func isArith(t ptxType) bool { return t.kind == 'u' || t.kind == 's' }
func isBits(t ptxType) bool  { return t.kind == 'b' }
func notPred(t ptxType) bool { return t.kind != 'p' }

// Float results: the value a GPU produces, NaN canonicalised.
func f32res(x float32) uint64 {
	if x != x {
		return 0x7fffffff
	}
	return uint64(math.Float32bits(x))
}

func f64res(x float64) uint64 {
	if x != x {
		return 0x7fffffffffffffff
	}
	return math.Float64bits(x)
}

func toF64(t ptxType, v uint64) float64 {
	if t.bits == 32 {
		return float64(math.Float32frombits(uint32(v)))
	}
	return math.Float64frombits(v)
}

func signExtend(v uint64, bits int) int64 {
	s := 64 - bits
	return int64(v<<s) >> s
}

func compile(e *Entry, r rawInstr) (instr, error) {
	in := instr{line: r.line, text: r.opcode, guard: -1, neg: r.neg}
	if r.guard != "" {
		ri, ok := e.regs[r.guard]
		if !ok || ri.typ.kind != 'p' {
			return in, fmt.Errorf("guard %s is not a declared predicate", r.guard)
		}
		in.guard = ri.idx
	}
	base, m := mods(r.opcode)
	c := &checker{e: e, r: r}
	var err error
	switch base {
	case "ld", "st":
		in.run, err = c.memory(base, m)
	case "cvta":
		in.run, err = c.cvta(m)
	case "mov":
		in.run, err = c.mov(m)
	case "add", "sub", "mul", "div":
		in.run, err = c.arith(base, m)
	case "and", "or":
		in.run, err = c.logic(base, m)
	case "shl", "shr":
		in.run, err = c.shift(base, m)
	case "clz":
		in.run, err = c.clz(m)
	case "setp":
		in.run, err = c.setp(m)
	case "selp":
		in.run, err = c.selp(m)
	case "cvt":
		in.run, err = c.cvt(m)
	case "bra":
		in.run, err = c.bra(m)
	case "ret":
		if len(m) != 0 || len(r.operands) != 0 {
			return in, fmt.Errorf("ret takes no modifiers or operands")
		}
		in.run = func(t *thread) error { t.pc = -1; return nil }
	default:
		return in, fmt.Errorf("unknown instruction %s", base)
	}
	return in, err
}

func (c *checker) memory(base string, m []string) (func(*thread) error, error) {
	if len(m) != 2 || (m[0] != "param" && m[0] != "global") || (base == "st" && m[0] != "global") {
		return nil, fmt.Errorf("unknown %s form .%s", base, strings.Join(m, "."))
	}
	t, err := oneType(m[1:], notPred)
	if err != nil {
		return nil, err
	}
	if err := c.count(2); err != nil {
		return nil, err
	}
	memOp, valOp := 1, 0
	if base == "st" {
		memOp, valOp = 0, 1
	}
	a := c.r.operands[memOp]
	if a.kind != opMem {
		return nil, fmt.Errorf("operand %d must be an address [..]", memOp)
	}
	size := t.bits / 8
	if m[0] == "param" {
		pi := -1
		for i, p := range c.e.Params {
			if p.Name == a.base {
				pi = i
				if p.Type != t {
					return nil, fmt.Errorf("parameter %s is %v, loaded as %v", p.Name, p.Type, t)
				}
			}
		}
		if pi < 0 || a.off != 0 {
			return nil, fmt.Errorf("unknown parameter %s", a.base)
		}
		d, err := c.reg(0, t)
		if err != nil {
			return nil, err
		}
		mask := t.mask()
		return func(th *thread) error { set(th, d, th.params[pi], mask); return nil }, nil
	}
	ri, ok := c.e.regs[a.base]
	if !ok {
		return nil, fmt.Errorf("address %s is not a declared register", a.base)
	}
	if !compatible(ptxType{'u', 64}, ri.typ) {
		return nil, fmt.Errorf("address register %s is %v, want 64 bits", a.base, ri.typ)
	}
	addr := readReg(ri.idx, a.base)
	off := uint64(a.off)
	if base == "ld" {
		d, err := c.reg(valOp, t)
		if err != nil {
			return nil, err
		}
		return func(th *thread) error {
			p, err := addr(th)
			if err != nil {
				return err
			}
			v, err := th.mem.load(p+off, size)
			if err != nil {
				return err
			}
			set(th, d, v, t.mask())
			return nil
		}, nil
	}
	v, err := c.src(valOp, t, false)
	if err != nil {
		return nil, err
	}
	return func(th *thread) error {
		p, err := addr(th)
		if err != nil {
			return err
		}
		x, err := v(th)
		if err != nil {
			return err
		}
		return th.mem.store(p+off, size, x)
	}, nil
}

func (c *checker) cvta(m []string) (func(*thread) error, error) {
	if strings.Join(m, ".") != "to.global.u64" {
		return nil, fmt.Errorf("unknown cvta form")
	}
	if err := c.count(2); err != nil {
		return nil, err
	}
	u64 := ptxType{'u', 64}
	d, err := c.reg(0, u64)
	if err != nil {
		return nil, err
	}
	a, err := c.src(1, u64, false)
	if err != nil {
		return nil, err
	}
	// Generic and global addresses are the same in the simulation.
	return func(t *thread) error {
		v, err := a(t)
		set(t, d, v, u64.mask())
		return err
	}, nil
}

func (c *checker) mov(m []string) (func(*thread) error, error) {
	t, err := oneType(m, notPred)
	if err != nil {
		return nil, err
	}
	if err := c.count(2); err != nil {
		return nil, err
	}
	d, err := c.reg(0, t)
	if err != nil {
		return nil, err
	}
	mask := t.mask()
	if s := c.r.operands[1]; s.kind == opReg && strings.Contains(s.text, ".") {
		if !isSpecial(s.text) {
			return nil, fmt.Errorf("unknown special register %s", s.text)
		}
		if t != (ptxType{'u', 32}) {
			return nil, fmt.Errorf("special register %s is read with mov.u32", s.text)
		}
		name := s.text
		return func(th *thread) error { set(th, d, th.special[name], mask); return nil }, nil
	}
	a, err := c.src(1, t, true)
	if err != nil {
		return nil, err
	}
	return func(th *thread) error {
		v, err := a(th)
		set(th, d, v, mask)
		return err
	}, nil
}

// binary compiles d = f(a, b) where the operands have types td, ta, tb and
// only b may be an immediate.
func (c *checker) binary(td, ta, tb ptxType, immB bool, f func(a, b uint64) uint64) (func(*thread) error, error) {
	if err := c.count(3); err != nil {
		return nil, err
	}
	d, err := c.reg(0, td)
	if err != nil {
		return nil, err
	}
	a, err := c.src(1, ta, false)
	if err != nil {
		return nil, err
	}
	b, err := c.src(2, tb, immB)
	if err != nil {
		return nil, err
	}
	mask := td.mask()
	return func(t *thread) error {
		x, err := a(t)
		if err != nil {
			return err
		}
		y, err := b(t)
		if err != nil {
			return err
		}
		set(t, d, f(x, y), mask)
		return nil
	}, nil
}

func (c *checker) arith(base string, m []string) (func(*thread) error, error) {
	if len(m) == 2 && m[0] == "rn" {
		// add.rn, sub.rn, mul.rn, div.rn on floats: IEEE, round to nearest
		// even, subnormals kept. Without .rn a float add or mul may be
		// fused into an fma and a div is approximate: not in the subset.
		t, err := oneType(m[1:], isFloat)
		if err != nil {
			return nil, err
		}
		if t.bits == 32 {
			f := map[string]func(x, y float32) float32{
				"add": func(x, y float32) float32 { return x + y },
				"sub": func(x, y float32) float32 { return x - y },
				"mul": func(x, y float32) float32 { return x * y },
				"div": func(x, y float32) float32 { return x / y },
			}[base]
			return c.binary(t, t, t, false, func(a, b uint64) uint64 {
				return f32res(f(math.Float32frombits(uint32(a)), math.Float32frombits(uint32(b))))
			})
		}
		f := map[string]func(x, y float64) float64{
			"add": func(x, y float64) float64 { return x + y },
			"sub": func(x, y float64) float64 { return x - y },
			"mul": func(x, y float64) float64 { return x * y },
			"div": func(x, y float64) float64 { return x / y },
		}[base]
		return c.binary(t, t, t, false, func(a, b uint64) uint64 {
			return f64res(f(math.Float64frombits(a), math.Float64frombits(b)))
		})
	}
	switch {
	case base == "mul" && strings.Join(m, ".") == "wide.u32":
		u32 := ptxType{'u', 32}
		return c.binary(ptxType{'u', 64}, u32, u32, true, func(a, b uint64) uint64 { return a * b })
	case base == "add" || base == "sub":
		t, err := oneType(m, isArith)
		if err != nil {
			return nil, err
		}
		if base == "add" {
			return c.binary(t, t, t, true, func(a, b uint64) uint64 { return a + b })
		}
		return c.binary(t, t, t, true, func(a, b uint64) uint64 { return a - b })
	}
	return nil, fmt.Errorf("unknown form %s.%s", base, strings.Join(m, "."))
}

func (c *checker) logic(base string, m []string) (func(*thread) error, error) {
	t, err := oneType(m, isBits)
	if err != nil {
		return nil, err
	}
	if base == "and" {
		return c.binary(t, t, t, true, func(a, b uint64) uint64 { return a & b })
	}
	return c.binary(t, t, t, true, func(a, b uint64) uint64 { return a | b })
}

func (c *checker) shift(base string, m []string) (func(*thread) error, error) {
	ok := isBits
	if base == "shr" {
		ok = func(t ptxType) bool { return t.kind == 'u' || t.kind == 'b' } // logical shifts only
	}
	t, err := oneType(m, ok)
	if err != nil {
		return nil, err
	}
	n := uint64(t.bits)
	// The shift amount is a .u32; amounts past the width clamp to it.
	if base == "shl" {
		return c.binary(t, t, ptxType{'u', 32}, true, func(a, b uint64) uint64 { return a << min(b, n) })
	}
	return c.binary(t, t, ptxType{'u', 32}, true, func(a, b uint64) uint64 { return a >> min(b, n) })
}

func (c *checker) clz(m []string) (func(*thread) error, error) {
	t, err := oneType(m, isBits)
	if err != nil {
		return nil, err
	}
	if err := c.count(2); err != nil {
		return nil, err
	}
	u32 := ptxType{'u', 32}
	d, err := c.reg(0, u32)
	if err != nil {
		return nil, err
	}
	a, err := c.src(1, t, false)
	if err != nil {
		return nil, err
	}
	width := t.bits
	return func(th *thread) error {
		v, err := a(th)
		if err != nil {
			return err
		}
		n := 0
		for i := width - 1; i >= 0 && v>>uint(i)&1 == 0; i-- {
			n++
		}
		set(th, d, uint64(n), u32.mask())
		return nil
	}, nil
}

func (c *checker) setp(m []string) (func(*thread) error, error) {
	if len(m) != 2 {
		return nil, fmt.Errorf("unknown setp form")
	}
	t, good := parseType(m[1])
	if !good || t.kind == 'p' {
		return nil, fmt.Errorf("unknown type suffix .%s", m[1])
	}
	cmp := m[0]
	var test func(a, b uint64) bool
	if t.kind == 'f' {
		ft, ok := map[string]func(x, y float64, nan bool) bool{
			"eq":  func(x, y float64, nan bool) bool { return !nan && x == y },
			"ne":  func(x, y float64, nan bool) bool { return !nan && x != y },
			"lt":  func(x, y float64, nan bool) bool { return !nan && x < y },
			"le":  func(x, y float64, nan bool) bool { return !nan && x <= y },
			"gt":  func(x, y float64, nan bool) bool { return !nan && x > y },
			"ge":  func(x, y float64, nan bool) bool { return !nan && x >= y },
			"equ": func(x, y float64, nan bool) bool { return nan || x == y },
			"neu": func(x, y float64, nan bool) bool { return nan || x != y },
			"ltu": func(x, y float64, nan bool) bool { return nan || x < y },
			"leu": func(x, y float64, nan bool) bool { return nan || x <= y },
			"gtu": func(x, y float64, nan bool) bool { return nan || x > y },
			"geu": func(x, y float64, nan bool) bool { return nan || x >= y },
			"num": func(x, y float64, nan bool) bool { return !nan },
			"nan": func(x, y float64, nan bool) bool { return nan },
		}[cmp]
		if !ok {
			return nil, fmt.Errorf("unknown float comparison %s", cmp)
		}
		test = func(a, b uint64) bool {
			x, y := toF64(t, a), toF64(t, b)
			return ft(x, y, x != x || y != y)
		}
	} else {
		if t.kind == 'b' && cmp != "eq" && cmp != "ne" {
			return nil, fmt.Errorf("comparison %s on a bit type", cmp)
		}
		signed := t.kind == 's'
		bits := t.bits
		it, ok := map[string]func(c int) bool{
			"eq": func(c int) bool { return c == 0 },
			"ne": func(c int) bool { return c != 0 },
			"lt": func(c int) bool { return c < 0 },
			"le": func(c int) bool { return c <= 0 },
			"gt": func(c int) bool { return c > 0 },
			"ge": func(c int) bool { return c >= 0 },
		}[cmp]
		if !ok {
			return nil, fmt.Errorf("unknown integer comparison %s", cmp)
		}
		test = func(a, b uint64) bool {
			c := 0
			if signed {
				x, y := signExtend(a, bits), signExtend(b, bits)
				if x < y {
					c = -1
				} else if x > y {
					c = 1
				}
			} else if a < b {
				c = -1
			} else if a > b {
				c = 1
			}
			return it(c)
		}
	}
	return c.binary(ptxType{'p', 1}, t, t, t.kind != 'f', func(a, b uint64) uint64 {
		if test(a, b) {
			return 1
		}
		return 0
	})
}

func (c *checker) selp(m []string) (func(*thread) error, error) {
	t, err := oneType(m, notPred)
	if err != nil {
		return nil, err
	}
	if err := c.count(4); err != nil {
		return nil, err
	}
	d, err := c.reg(0, t)
	if err != nil {
		return nil, err
	}
	a, err := c.src(1, t, true)
	if err != nil {
		return nil, err
	}
	b, err := c.src(2, t, true)
	if err != nil {
		return nil, err
	}
	p, err := c.src(3, ptxType{'p', 1}, false)
	if err != nil {
		return nil, err
	}
	mask := t.mask()
	return func(th *thread) error {
		x, err := a(th)
		if err != nil {
			return err
		}
		y, err := b(th)
		if err != nil {
			return err
		}
		q, err := p(th)
		if err != nil {
			return err
		}
		if q == 0 {
			x = y
		}
		set(th, d, x, mask)
		return nil
	}, nil
}

func (c *checker) cvt(m []string) (func(*thread) error, error) {
	if len(m) != 2 {
		return nil, fmt.Errorf("unknown cvt form .%s (only integer conversions are in the subset)", strings.Join(m, "."))
	}
	td, ok1 := parseType(m[0])
	ts, ok2 := parseType(m[1])
	if !ok1 || !ok2 || !isArith(td) || !isArith(ts) {
		return nil, fmt.Errorf("cvt.%s.%s: only integer conversions are in the subset", m[0], m[1])
	}
	if err := c.count(2); err != nil {
		return nil, err
	}
	d, err := c.reg(0, td)
	if err != nil {
		return nil, err
	}
	a, err := c.src(1, ts, false)
	if err != nil {
		return nil, err
	}
	return func(t *thread) error {
		v, err := a(t)
		if err != nil {
			return err
		}
		if ts.kind == 's' {
			v = uint64(signExtend(v, ts.bits))
		}
		set(t, d, v, td.mask())
		return nil
	}, nil
}

func (c *checker) bra(m []string) (func(*thread) error, error) {
	if len(m) > 1 || len(m) == 1 && m[0] != "uni" {
		return nil, fmt.Errorf("unknown bra form")
	}
	if err := c.count(1); err != nil {
		return nil, err
	}
	o := c.r.operands[0]
	target, ok := c.e.labels[o.text]
	if o.kind != opName || !ok {
		return nil, fmt.Errorf("branch to unknown label %s", o.text)
	}
	return func(t *thread) error { t.pc = target; return nil }, nil
}

// ---------------------------------------------------------------------------
// Memory and launches.

type Memory struct {
	bufs []*memBuf
	next uint64
}

type memBuf struct {
	base uint64
	data []byte
}

// Alloc places data in global memory and returns its address. The kernel
// reads and writes data itself.
func (m *Memory) Alloc(data []byte) uint64 {
	if m.next == 0 {
		m.next = 0x7f0000000000
	}
	base := m.next
	m.bufs = append(m.bufs, &memBuf{base, data})
	m.next += (uint64(len(data)) + 4096) &^ 255 // a gap after every buffer
	return base
}

func (m *Memory) find(addr uint64, size int) ([]byte, error) {
	if addr%uint64(size) != 0 {
		return nil, fmt.Errorf("misaligned %d-byte access at %#x", size, addr)
	}
	for _, b := range m.bufs {
		if addr >= b.base && addr+uint64(size) <= b.base+uint64(len(b.data)) {
			o := addr - b.base
			return b.data[o : o+uint64(size)], nil
		}
	}
	return nil, fmt.Errorf("%d-byte access at %#x is outside every buffer", size, addr)
}

func (m *Memory) load(addr uint64, size int) (uint64, error) {
	b, err := m.find(addr, size)
	if err != nil {
		return 0, err
	}
	var v uint64
	for i := size - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v, nil
}

func (m *Memory) store(addr uint64, size int, v uint64) error {
	b, err := m.find(addr, size)
	if err != nil {
		return err
	}
	for i := range size {
		b[i] = byte(v >> (8 * i))
	}
	return nil
}

// maxSteps bounds the instructions one launch may execute.
const maxSteps = 1 << 28

// Launch runs entry name over grid blocks of block threads each, with the
// parameters' raw values (a float32 as its bits). Threads run one after
// another, in a shuffled order, each to its ret.
func (m *Module) Launch(name string, grid, block int, args []uint64, mem *Memory) error {
	e, ok := m.Entries[name]
	if !ok {
		return fmt.Errorf("no entry %s", name)
	}
	if len(args) != len(e.Params) {
		return fmt.Errorf("%s takes %d parameters, got %d", name, len(e.Params), len(args))
	}
	for i, p := range e.Params {
		if args[i]&^p.Type.mask() != 0 {
			return fmt.Errorf("parameter %s: %#x does not fit %v", p.Name, args[i], p.Type)
		}
	}
	order := rand.New(rand.NewPCG(uint64(grid), uint64(block))).Perm(grid * block)
	t := &thread{r: make([]uint64, e.nregs), set: make([]bool, e.nregs), params: args, mem: mem,
		special: map[string]uint64{"%ntid.x": uint64(block), "%nctaid.x": uint64(grid)}}
	steps := 0
	for _, g := range order {
		clear(t.set)
		t.special["%ctaid.x"], t.special["%tid.x"] = uint64(g/block), uint64(g%block)
		t.pc = 0
		for t.pc >= 0 {
			if t.pc >= len(e.code) {
				return fmt.Errorf("%s: control runs off the end without ret", name)
			}
			if steps++; steps > maxSteps {
				return fmt.Errorf("%s: more than %d steps", name, maxSteps)
			}
			in := e.code[t.pc]
			t.pc++
			if in.guard >= 0 {
				if !t.set[in.guard] {
					return fmt.Errorf("%s line %d: guard read before it is written", name, in.line)
				}
				if (t.r[in.guard] != 0) == in.neg {
					continue
				}
			}
			if err := in.run(t); err != nil {
				return fmt.Errorf("%s line %d (%s), block %d thread %d: %w", name, in.line, in.text, g/block, g%block, err)
			}
		}
	}
	return nil
}
