// Command mnist trains a small network on MNIST digits with gorgonia,
// data-parallel under `ringo launch`:
//
//	make data   # data/mnist/{train,test}: 8,000 / 2,000 real digits
//	make demo   # builds ringo and this example, then the line below
//	bin/ringo launch --nproc-per-node 4 -- bin/mnist --data data/mnist --epochs 5 --ckpt ckpt
//
// # Models
//
// --model cnn (the default): 3×3 convolution 1→16 channels, ReLU, 2×2
// max-pool; 3×3 convolution 16→32, ReLU, 2×2 max-pool; dense 1568→128,
// ReLU; dense 128→10 (207k parameters). On the 8,000/2,000 split it reaches
// about 0.96 test accuracy in five epochs. --model mlp: dense 784→128, ReLU,
// dense 128→10; it tops out near 0.94. --hidden sets the dense hidden
// layer's width (128): with --hidden 2048 the CNN has 3.2M parameters for
// about three times the computation of the default, the case where
// syncing sites less often (--outer-every) pays most.
//
// # One step
//
// Each worker reads its share of the global batch (--batch / world size)
// through package dataloader: the shards `ringo data pack --from mnist`
// wrote (records with fields "image", 784 bytes, and "label", 1 byte), in
// the job-wide shuffled order of package order, the last incomplete
// global batch of each epoch dropped. gorgonia runs the forward and
// backward pass of the mean cross-entropy over the local batch; its
// gradient buffers (node.Grad(), live []float32 after vm.RunAll) are
// averaged in place with runtime.Gradients, which makes them the gradient
// of the global batch's mean loss on every worker; then Adam updates the
// parameters, and the gradients are zeroed (gorgonia adds each run's
// gradients to the buffers).
//
// # Adam, implemented here
//
// gorgonia's AdamSolver keeps its moments and step count in unexported
// fields, where a checkpoint cannot reach them. So gorgonia builds the model
// and computes the gradients, and adam.go implements Adam (PyTorch's form:
// lr 1e-3, β 0.9/0.999, ε 1e-8, no weight decay) over the parameters'
// []float32 buffers, which gorgonia uses in place.
//
// # Checkpoints and restarts
//
// runtime.Trainer tracks every parameter, both Adam moments of each, and
// Adam's step count; the checkpoint's metadata holds the data loader's
// position (the order.State of the last batch), so a job restarted by the
// launcher, or started again with the same --ckpt, continues with the
// next batch and ends with the weights, bit for bit, of a run that was
// never interrupted. Checkpoints are written in the background every
// --save-every steps and at the end of every epoch; --verify-every checks
// that all replicas hold identical weights, and the run ends with that
// check.
//
// # Output
//
// Rank 0 prints, per epoch, the mean training loss, the accuracy on all
// test digits (each worker evaluates a part; the counts are summed), the
// epoch's training throughput in samples per second and the checkpoint;
// then the final accuracy and the hash all replicas agree on. --bench
// skips checkpoints and per-epoch evaluation and reports where step time
// goes: compute, gradient averaging (which includes waiting for the
// slowest worker) and waiting for data.
//
// Workers on one node share its cores: unless GOMAXPROCS is set, each
// takes cores/local-workers threads.
package main
