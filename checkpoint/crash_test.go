package checkpoint_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/checkpoint"
)

const crashDirEnv = "RINGO_TEST_CRASH_DIR"

// stateAt is the single-rank state saved at step: every byte depends on
// the step, so a checkpoint mixing two saves cannot pass for either.
func stateAt(step int64) *checkpoint.State {
	st := stateFor(0, 1, true)
	for i := range st.Tensors {
		for j := range st.Tensors[i].Data {
			st.Tensors[i].Data[j] ^= byte(step) ^ byte(step>>8)
		}
	}
	return st
}

// TestCrashChild is the child of TestKilledWhileSaving: it saves step
// after step until it is killed. It does nothing in a normal run.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("only runs as the child of TestKilledWhileSaving")
	}
	step, _, err := checkpoint.Latest(dir)
	if err != nil && !errors.Is(err, checkpoint.ErrNoCheckpoint) {
		t.Fatal(err)
	}
	fmt.Println("saving") // the parent times its kill from here
	for {
		step++
		if err := checkpoint.Save(context.Background(), checkpoint.Single{}, dir, step, stateAt(step)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestKilledWhileSaving: a process saving in a loop is killed with
// SIGKILL at random moments, 50 times; after every kill the newest
// complete checkpoint loads, passes its checksums, and holds exactly the
// state saved at its step.
func TestKilledWhileSaving(t *testing.T) {
	if os.Getenv(crashDirEnv) != "" {
		t.Skip("child")
	}
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(7, 11))
	kills := 50
	if testing.Short() {
		kills = 10
	}
	var last int64
	interrupted := 0 // kills that left a half-written save behind
	for k := 0; k < kills; k++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The kill's moment counts from the child's first save, not from
		// its start, which a loaded machine (-race) can delay past every
		// moment drawn below.
		started, drained := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(drained) // read to EOF before Wait closes the pipe
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if sc.Text() == "saving" {
					close(started)
					break
				}
			}
			io.Copy(io.Discard, out)
		}()
		select {
		case <-started:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-drained
			cmd.Wait()
			t.Fatalf("kill %d: the child did not start saving within 20 s", k)
		}
		if last == 0 {
			// Until a first save has landed, wait for it: a child that
			// starts slowly (a loaded machine, -race) would otherwise be
			// killed before it saves anything, every time.
			for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				if _, _, err := checkpoint.Latest(dir); err == nil {
					break
				}
			}
		}
		time.Sleep(time.Duration(rng.IntN(60)) * time.Millisecond)
		cmd.Process.Kill()
		<-drained
		cmd.Wait()

		if midSave(dir) {
			interrupted++
		}
		step, _, err := checkpoint.Latest(dir)
		if errors.Is(err, checkpoint.ErrNoCheckpoint) && last == 0 {
			continue // killed before its first commit
		}
		if err != nil {
			t.Fatalf("kill %d: %v", k, err)
		}
		if step < last {
			t.Fatalf("kill %d: newest checkpoint went back from step %d to %d", k, last, step)
		}
		last = step
		got := stateFor(0, 1, false)
		if err := checkpoint.Load(context.Background(), dir, step, got); err != nil {
			t.Fatalf("kill %d: step %d does not load: %v", k, step, err)
		}
		want := stateAt(step)
		for i := range got.Tensors {
			if !bytes.Equal(got.Tensors[i].Data, want.Tensors[i].Data) {
				t.Fatalf("kill %d: step %d tensor %q is not the state saved at that step", k, step, got.Tensors[i].Name)
			}
		}
	}
	if last == 0 {
		t.Fatal("no checkpoint was ever committed; the children never got to save")
	}
	if interrupted == 0 {
		t.Fatalf("none of %d kills landed in the middle of a save; the test proved nothing", kills)
	}
	t.Logf("%d kills, %d of them mid-save; newest step %d", kills, interrupted, last)
}

// midSave reports whether dir holds the remains of an interrupted save.
func midSave(dir string) bool {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			return true
		}
		if _, err := os.Stat(filepath.Join(dir, e.Name(), checkpoint.ManifestFile)); err != nil {
			return true
		}
	}
	return false
}
