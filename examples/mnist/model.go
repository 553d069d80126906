package main

import (
	"fmt"
	"math"
	"math/rand/v2"
	"unsafe"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// Layer sizes. The CNN: conv 3×3 1→convC1, ReLU, 2×2 max-pool; conv 3×3
// convC1→convC2, ReLU, 2×2 max-pool; dense convC2·7·7→hidden, ReLU;
// dense hidden→10. The MLP: dense 784→hidden, ReLU, dense hidden→10.
// hidden is --hidden, defaultHidden unless set: a wide MLP has many
// parameters for its computation, the case where synchronising less often
// pays most (BENCHMARKS.md, training across sites).
const (
	convC1, convC2 = 16, 32
	defaultHidden  = 128
	classes        = 10
)

// param is one learnable tensor. Its value lives in w, shared by the
// training and the evaluation graph, so the optimiser updates both in
// place.
type param struct {
	name  string
	shape []int
	w     *tensor.Dense
	node  *G.Node // in the training graph
}

func (p *param) data() []float32 { return p.w.Data().([]float32) }

// shape64 is the shape as the trainer's Track takes it.
func (p *param) shape64() []int64 {
	s := make([]int64, len(p.shape))
	for i, d := range p.shape {
		s[i] = int64(d)
	}
	return s
}

// net is a model compiled twice: a training graph of batch size batch that
// computes the mean cross-entropy and its gradients, and a forward-only
// evaluation graph of batch size evalBatch.
type net struct {
	kind   string
	params []*param

	batch  int
	tx, ty *tensor.Dense // the training batch's inputs and one-hot labels, written in place
	cost   G.Value
	vm     G.VM
	grads  [][]float32 // gorgonia's gradient buffers, one per param; they accumulate over runs

	evalBatch int
	ex        *tensor.Dense
	logits    G.Value
	evm       G.VM
}

// newNet builds model kind ("cnn" or "mlp") with a dense hidden layer of
// hidden units and weights drawn from seed.
func newNet(kind string, hidden, batch, evalBatch int, seed uint64) (n *net, err error) {
	if hidden < 1 {
		return nil, fmt.Errorf("model %q: a hidden layer of %d units: want at least 1", kind, hidden)
	}
	n = &net{kind: kind, batch: batch, evalBatch: evalBatch}
	rng := rand.New(rand.NewPCG(seed, 0x77656967687473))
	add := func(name string, fanIn int, bias bool, shape ...int) {
		p := &param{name: name, shape: shape, w: tensor.New(tensor.WithShape(shape...), tensor.Of(tensor.Float32))}
		switch {
		case bias: // biases start at zero
		case name == "fc2.w":
			// The output layer: uniform in ±1/sqrt(fan-in), PyTorch's
			// default, so that the first logits are small.
			bound := 1 / math.Sqrt(float64(fanIn))
			for i := range p.data() {
				p.data()[i] = float32((2*rng.Float64() - 1) * bound)
			}
		default:
			// He initialisation for the layers followed by a ReLU.
			std := math.Sqrt(2 / float64(fanIn))
			for i := range p.data() {
				p.data()[i] = float32(rng.NormFloat64() * std)
			}
		}
		n.params = append(n.params, p)
	}
	switch kind {
	case "cnn":
		add("conv1.w", 9, false, convC1, 1, 3, 3)
		add("conv1.b", 0, true, 1, convC1, 1, 1)
		add("conv2.w", 9*convC1, false, convC2, convC1, 3, 3)
		add("conv2.b", 0, true, 1, convC2, 1, 1)
		add("fc1.w", convC2*7*7, false, convC2*7*7, hidden)
		add("fc1.b", 0, true, 1, hidden)
		add("fc2.w", hidden, false, hidden, classes)
		add("fc2.b", 0, true, 1, classes)
	case "mlp":
		add("fc1.w", pixels, false, pixels, hidden)
		add("fc1.b", 0, true, 1, hidden)
		add("fc2.w", hidden, false, hidden, classes)
		add("fc2.b", 0, true, 1, classes)
	default:
		return nil, fmt.Errorf("model %q: want cnn or mlp", kind)
	}
	// gorgonia's constructors panic on shape errors; the shapes here are
	// fixed, so a panic is a bug, reported as an error.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("building the %s graph: %v", kind, r)
		}
	}()
	if err := n.buildTrain(); err != nil {
		return nil, err
	}
	if err := n.buildEval(); err != nil {
		return nil, err
	}
	return n, nil
}

// input makes the input node of a graph, backed by a tensor the caller
// fills in place.
func (n *net) input(g *G.ExprGraph, batch int) (*G.Node, *tensor.Dense) {
	shape := []int{batch, pixels}
	if n.kind == "cnn" {
		shape = []int{batch, 1, 28, 28}
	}
	t := tensor.New(tensor.WithShape(shape...), tensor.Of(tensor.Float32))
	return G.NodeFromAny(g, t, G.WithName("x")), t
}

// forward builds the logits of x from the parameter nodes ps.
func (n *net) forward(x *G.Node, ps []*G.Node, batch int) *G.Node {
	m := G.Must
	dense := func(h, w, b *G.Node) *G.Node { return m(G.BroadcastAdd(m(G.Mul(h, w)), b, nil, []byte{0})) }
	if n.kind == "mlp" {
		h := m(G.Rectify(dense(x, ps[0], ps[1])))
		return dense(h, ps[2], ps[3])
	}
	conv := func(h, w, b *G.Node) *G.Node {
		c := m(G.Conv2d(h, w, tensor.Shape{3, 3}, []int{1, 1}, []int{1, 1}, []int{1, 1}))
		c = m(G.Rectify(m(G.BroadcastAdd(c, b, nil, []byte{0, 2, 3}))))
		return m(G.MaxPool2D(c, tensor.Shape{2, 2}, []int{0, 0}, []int{2, 2}))
	}
	h := conv(conv(x, ps[0], ps[1]), ps[2], ps[3])
	h = m(G.Reshape(h, tensor.Shape{batch, convC2 * 7 * 7}))
	h = m(G.Rectify(dense(h, ps[4], ps[5])))
	return dense(h, ps[6], ps[7])
}

func (n *net) buildTrain() error {
	g := G.NewGraph()
	x, tx := n.input(g, n.batch)
	ty := tensor.New(tensor.WithShape(n.batch, classes), tensor.Of(tensor.Float32))
	y := G.NodeFromAny(g, ty, G.WithName("y"))
	var ps G.Nodes
	for _, p := range n.params {
		p.node = G.NodeFromAny(g, p.w, G.WithName(p.name))
		ps = append(ps, p.node)
	}
	logits := n.forward(x, ps, n.batch)
	// The mean over the local batch of -log softmax(logits)[label]: with
	// every rank's local batch the same size, the average of the ranks'
	// gradients is the gradient of the global batch's mean loss.
	m := G.Must
	nll := m(G.Neg(m(G.Sum(m(G.HadamardProd(m(G.LogSoftMax(logits)), y))))))
	cost := m(G.Div(nll, G.NewConstant(float32(n.batch))))
	G.Read(cost, &n.cost)
	if _, err := G.Grad(cost, ps...); err != nil {
		return err
	}
	n.tx, n.ty = tx, ty
	n.vm = G.NewTapeMachine(g, G.BindDualValues(ps...))
	// Run once to make gorgonia allocate its gradient buffers, then keep
	// them: they are the same slices every step.
	if err := n.vm.RunAll(); err != nil {
		return err
	}
	n.vm.Reset()
	for _, p := range n.params {
		v := p.node.Value()
		if v == nil || !sameSlice(v.Data().([]float32), p.data()) {
			return fmt.Errorf("gorgonia copied parameter %s instead of using it in place", p.name)
		}
		gv, err := p.node.Grad()
		if err != nil {
			return fmt.Errorf("gradient of %s: %w", p.name, err)
		}
		n.grads = append(n.grads, gv.Data().([]float32))
	}
	n.zeroGrads()
	return nil
}

func (n *net) buildEval() error {
	g := G.NewGraph()
	x, ex := n.input(g, n.evalBatch)
	var ps []*G.Node
	for _, p := range n.params {
		ps = append(ps, G.NodeFromAny(g, p.w, G.WithName(p.name)))
	}
	G.Read(n.forward(x, ps, n.evalBatch), &n.logits)
	n.ex = ex
	n.evm = G.NewTapeMachine(g)
	return nil
}

func sameSlice(a, b []float32) bool {
	return len(a) == len(b) && (len(a) == 0 || unsafe.SliceData(a) == unsafe.SliceData(b))
}

// zeroGrads clears the gradient buffers: gorgonia adds each run's
// gradients to them.
func (n *net) zeroGrads() {
	for _, g := range n.grads {
		clear(g)
	}
}

// step runs forward and backward on a batch of exactly n.batch digits and
// returns the mean loss; the gradients of that mean are added to n.grads.
func (n *net) step(batch []digit) (float32, error) {
	if len(batch) != n.batch {
		return 0, fmt.Errorf("batch of %d digits, the graph takes %d", len(batch), n.batch)
	}
	x, y := n.tx.Data().([]float32), n.ty.Data().([]float32)
	clear(y)
	for i := range batch {
		copy(x[i*pixels:], batch[i].x[:])
		y[i*classes+batch[i].label] = 1
	}
	defer n.vm.Reset()
	if err := n.vm.RunAll(); err != nil {
		return 0, err
	}
	return n.cost.Data().(float32), nil
}

// predict returns the predicted class of each digit.
func (n *net) predict(ds []digit) ([]int, error) {
	out := make([]int, 0, len(ds))
	x := n.ex.Data().([]float32)
	for start := 0; start < len(ds); start += n.evalBatch {
		part := ds[start:min(start+n.evalBatch, len(ds))]
		clear(x)
		for i := range part {
			copy(x[i*pixels:], part[i].x[:])
		}
		err := n.evm.RunAll()
		if err != nil {
			return nil, err
		}
		logits := n.logits.Data().([]float32)
		for i := range part {
			row := logits[i*classes : (i+1)*classes]
			best := 0
			for c, v := range row {
				if v > row[best] {
					best = c
				}
			}
			out = append(out, best)
		}
		n.evm.Reset()
	}
	return out, nil
}
