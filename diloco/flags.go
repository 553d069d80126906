package diloco

import (
	"flag"
	"fmt"
)

// AddFlags registers --outer-every and the other --outer-* flags on fs,
// with c's values as defaults, so that every trainer spells them alike.
// --outer-every 0 (the default here) means no outer syncs: the program
// averages over every rank each step.
func AddFlags(fs *flag.FlagSet, c *Config) {
	fs.IntVar(&c.Every, "outer-every", 0, "train across sites: average gradients inside each site (ringo launch --site) every step, and sync the sites every N steps (0: one average over every rank each step)")
	fs.Float64Var(&c.LR, "outer-lr", c.LR, "outer learning rate")
	fs.Float64Var(&c.Momentum, "outer-momentum", c.Momentum, "outer momentum (Nesterov unless --outer-nesterov=false)")
	fs.BoolVar(&c.Nesterov, "outer-nesterov", c.Nesterov, "Nesterov's form of the outer momentum")
	fs.IntVar(&c.Delay, "outer-delay", c.Delay, "apply each outer sync this many steps after it starts, so that the exchange overlaps them")
	fs.Func("outer-precision", fmt.Sprintf("outer deltas on the wire as f32, bf16 or fp16 (default %s)", c.Precision), func(s string) error {
		c.Precision = Precision(s)
		return nil
	})
	fs.Float64Var(&c.TopK, "outer-topk", c.TopK, "send only this fraction of each delta, its largest values; error feedback keeps the rest for later syncs (0: all)")
	fs.BoolVar(&c.Zstd, "outer-zstd", c.Zstd, "zstd-compress outer deltas")
	fs.DurationVar(&c.Deadline, "outer-deadline", c.Deadline, "with sites federated through a store (ringo launch --federation): how long a sync waits for missing sites before it goes ahead without them (0: wait for all)")
}
