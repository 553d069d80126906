package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/ringo-ml/ringo/collective"
	ringo "github.com/ringo-ml/ringo/runtime"
)

var (
	replanBytes = flag.Int("replan-bytes", 0, "train-like loop: all-reduce this many bytes per step through a Trainer (which re-plans every RINGO_REPLAN_EVERY steps) until --stop-file exists, rank 0 printing each step's time")
	stopFile    = flag.String("stop-file", "", "with --replan-bytes: the steps end once this file exists on any rank")
)

// runReplanLoop is a training loop without the model: each step one
// all-reduce, timed, then the Trainer's step (heartbeat, re-plan). The
// first element carries each rank's "stop" vote, so that all ranks stop at
// the same step.
func runReplanLoop(ctx context.Context, g *ringo.Group) {
	t, err := g.NewTrainer(ctx, ringo.TrainerConfig{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "rank %d: %v\n", g.Rank(), err)
		os.Exit(1)
	}
	defer t.Close()
	buf := make([]float32, *replanBytes/4)
	n := float32(g.Size())
	for step := int64(1); ; step++ {
		stop := float32(0)
		if _, err := os.Stat(*stopFile); err == nil {
			stop = 1
		}
		for i := range buf {
			buf[i] = float32(g.Rank() + 1)
		}
		buf[0] = stop
		t0 := time.Now()
		if err := g.AllReduce(ctx, collective.Float32s(buf), collective.Float32s(buf), collective.Sum); err != nil {
			fmt.Fprintf(os.Stderr, "rank %d step %d: %v\n", g.Rank(), step, err)
			os.Exit(1)
		}
		took := time.Since(t0)
		if want := n * (n + 1) / 2; buf[len(buf)-1] != want {
			fmt.Fprintf(os.Stderr, "rank %d step %d: sum %v, want %v\n", g.Rank(), step, buf[len(buf)-1], want)
			os.Exit(1)
		}
		if err := t.Step(ctx, step, nil); err != nil {
			fmt.Fprintf(os.Stderr, "rank %d step %d: %v\n", g.Rank(), step, err)
			os.Exit(1)
		}
		if g.Rank() == 0 {
			fmt.Printf("replan-loop step %d: all-reduce %.4f s, replans %d\n", step, took.Seconds(), len(g.Replans()))
		}
		if buf[0] > 0 {
			fmt.Printf("rank %d of %d: done %d steps, last sum %v, restarts %d\n", g.Rank(), g.Size(), step, buf[1], g.Restarts)
			return
		}
	}
}
