package main

import "math"

// adam is the Adam optimiser (Kingma & Ba, with PyTorch's form of the
// update and no weight decay) over float32 parameter buffers. gorgonia's
// AdamSolver keeps its moments and step count in unexported fields, where
// a checkpoint cannot reach them; these live in plain slices that the
// trainer tracks, so a restart resumes the optimiser exactly.
type adam struct {
	lr, beta1, beta2, eps float64
	// steps holds the number of updates taken (a float64 so that the
	// trainer can track it with the moments).
	steps [1]float64
	m, v  [][]float32
}

func newAdam(params []*param, lr float64) *adam {
	a := &adam{lr: lr, beta1: 0.9, beta2: 0.999, eps: 1e-8}
	for _, p := range params {
		a.m = append(a.m, make([]float32, len(p.data())))
		a.v = append(a.v, make([]float32, len(p.data())))
	}
	return a
}

// update takes one step of params along grads (both in the order given to
// newAdam) and then zeroes grads.
func (a *adam) update(params []*param, grads [][]float32) {
	a.steps[0]++
	t := a.steps[0]
	// p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + ε)
	stepSize := float32(a.lr / (1 - math.Pow(a.beta1, t)))
	rootBC2 := float32(math.Sqrt(1 - math.Pow(a.beta2, t)))
	b1, b2 := float32(a.beta1), float32(a.beta2)
	eps := float32(a.eps)
	for i, p := range params {
		w, g, m, v := p.data(), grads[i], a.m[i], a.v[i]
		_, _, _ = g[len(w)-1], m[len(w)-1], v[len(w)-1]
		for j := range w {
			gj := g[j]
			m[j] = b1*m[j] + (1-b1)*gj
			v[j] = b2*v[j] + (1-b2)*gj*gj
			w[j] -= stepSize * m[j] / (float32(math.Sqrt(float64(v[j])))/rootBC2 + eps)
		}
		clear(g)
	}
}
