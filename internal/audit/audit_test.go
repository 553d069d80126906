package audit

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func write(t *testing.T, n int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := l.Record("event", map[string]any{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func lines(t *testing.T, p string) []string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
}

func put(t *testing.T, p string, ls []string) {
	if err := os.WriteFile(p, []byte(strings.Join(ls, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestIntactLogVerifies(t *testing.T) {
	p := write(t, 5)
	if n, err := Verify(p); err != nil || n != 5 {
		t.Fatalf("Verify: %d lines, %v", n, err)
	}
}

func TestRemovedLineIsFound(t *testing.T) {
	p := write(t, 5)
	ls := lines(t, p)
	put(t, p, append(ls[:2:2], ls[3:]...))
	_, err := Verify(p)
	if !errors.Is(err, ErrBroken) || !strings.Contains(err.Error(), "line 3") || !strings.Contains(err.Error(), "removed") {
		t.Fatalf("removed line 3: %v", err)
	}
}

func TestEditedLineIsFound(t *testing.T) {
	p := write(t, 5)
	ls := lines(t, p)
	ls[1] = strings.Replace(ls[1], `"i":1`, `"i":9`, 1)
	put(t, p, ls)
	_, err := Verify(p)
	if !errors.Is(err, ErrBroken) || !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), "edited") {
		t.Fatalf("edited line 2: %v", err)
	}
	// Editing the last line is found by its own hash.
	p = write(t, 3)
	ls = lines(t, p)
	ls[2] = strings.Replace(ls[2], `"i":2`, `"i":7`, 1)
	put(t, p, ls)
	if _, err := Verify(p); !errors.Is(err, ErrBroken) || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("edited last line: %v", err)
	}
}

// Many writers, in this process and in others, keep one unbroken chain.
func TestConcurrentWritersKeepTheChain(t *testing.T) {
	p := write(t, 0)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, _ := Open(p)
			for range 25 {
				if err := l.Record("goroutine", nil); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	// Another process: this test binary re-run as a writer.
	cmd := exec.Command(os.Args[0], "-test.run=TestHelperWriter")
	cmd.Env = append(os.Environ(), "AUDIT_HELPER_FILE="+p)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("writer process: %v\n%s", err, out)
	}
	wg.Wait()
	if n, err := Verify(p); err != nil || n != 150 {
		t.Fatalf("Verify: %d lines (want 150), %v", n, err)
	}
}

func TestHelperWriter(t *testing.T) {
	p := os.Getenv("AUDIT_HELPER_FILE")
	if p == "" {
		t.Skip("skipped: only runs as the helper process of TestConcurrentWritersKeepTheChain")
	}
	l, _ := Open(p)
	for range 50 {
		if err := l.Record("process", nil); err != nil {
			t.Fatal(err)
		}
	}
}

func TestNilLogRecordsNothing(t *testing.T) {
	var l *Log
	if err := l.Record("x", nil); err != nil {
		t.Fatal(err)
	}
}
