// Package audit writes and verifies the job's audit log: JSON lines, one
// event each (who joined, restarts and why, checkpoint saves, loads and
// deletions, the configuration at start), each carrying the SHA-256 of the
// line before it and of itself, so that a removed or edited line breaks
// the chain and `ringo audit verify` names it.
//
// Several processes may append to one log (the launcher and its workers):
// each append takes an exclusive flock on the file, reads the last line's
// hash, and writes one line with O_APPEND, so the chain stays whole.
//
// Line format (version 1):
//
//	{"v":1,"seq":7,"time":"2026-11-28T23:40:00.123Z","event":"restart",
//	 "fields":{"reason":"..."},"prev":"<hex sha256 of line 6>","hash":"<hex sha256>"}
//
// hash covers the line with "hash" empty; prev of line 1 is 64 zeros.
// What the chain cannot show: lines cut from the end of the file, or a
// forger who rewrites every line after the one changed. Ship the log off
// the machine (or note its last hash elsewhere) when that matters.
package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"
)

// Version of the line format.
const Version = 1

// EnvFile names the audit log that a launcher passes to its workers, so
// that their checkpoint saves and loads land in the same chain.
const EnvFile = "RINGO_AUDIT_LOG"

var zeroHash = strings.Repeat("0", 64)

type line struct {
	V      int            `json:"v"`
	Seq    int64          `json:"seq"`
	Time   time.Time      `json:"time"`
	Event  string         `json:"event"`
	Fields map[string]any `json:"fields,omitempty"`
	Prev   string         `json:"prev"`
	Hash   string         `json:"hash"`
}

func (l *line) digest() (string, error) {
	c := *l
	c.Hash = ""
	b, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// Log appends events to one audit file.
type Log struct{ path string }

// Open returns the log at path, creating the file (mode 0600) if needed.
func Open(path string) (*Log, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	f.Close()
	return &Log{path: path}, nil
}

// FromEnv returns the log named by RINGO_AUDIT_LOG, or nil when unset.
func FromEnv() *Log {
	p := os.Getenv(EnvFile)
	if p == "" {
		return nil
	}
	l, err := Open(p)
	if err != nil {
		return nil
	}
	return l
}

// Record appends one event. A nil *Log records nothing, so callers need
// not check whether auditing is on.
func (l *Log) Record(event string, fields map[string]any) error {
	if l == nil {
		return nil
	}
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("audit log %s: lock: %w", l.path, err)
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	last, err := lastLine(f)
	if err != nil {
		return fmt.Errorf("audit log %s: %w", l.path, err)
	}
	ln := line{V: Version, Seq: 1, Time: time.Now().UTC(), Event: event, Fields: fields, Prev: zeroHash}
	if last != nil {
		ln.Seq, ln.Prev = last.Seq+1, last.Hash
	}
	if ln.Hash, err = ln.digest(); err != nil {
		return fmt.Errorf("audit log: event %q: %w", event, err)
	}
	b, _ := json.Marshal(ln)
	if _, err := f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("audit log %s: %w", l.path, err)
	}
	return f.Sync()
}

// lastLine reads the file's last line, or nil for an empty file.
func lastLine(f *os.File) (*line, error) {
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil || end == 0 {
		return nil, err
	}
	// Lines are small; read back until a newline before the last one.
	for back := int64(4096); ; back *= 2 {
		start := max(0, end-back)
		buf := make([]byte, end-start)
		if _, err := f.ReadAt(buf, start); err != nil {
			return nil, err
		}
		buf = bytes.TrimRight(buf, "\n")
		if i := bytes.LastIndexByte(buf, '\n'); i >= 0 || start == 0 {
			var ln line
			if err := json.Unmarshal(buf[i+1:], &ln); err != nil {
				return nil, fmt.Errorf("the last line is not an audit record (%v); run ringo audit verify", err)
			}
			return &ln, nil
		}
	}
}

// ErrBroken is wrapped by Verify's error when the chain does not hold.
var ErrBroken = errors.New("audit log chain broken")

// Verify reads the whole log and checks every line's hash and its link to
// the line before. It returns the number of lines, and an error naming
// the first line (1-based) that was removed, edited or malformed.
func Verify(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("audit log: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	prev, seq, n := zeroHash, int64(0), 0
	for sc.Scan() {
		n++
		var ln line
		if err := json.Unmarshal(sc.Bytes(), &ln); err != nil {
			return n, fmt.Errorf("%w: line %d is not an audit record: %v", ErrBroken, n, err)
		}
		h, err := ln.digest()
		switch {
		case err != nil || h != ln.Hash:
			return n, fmt.Errorf("%w: line %d (seq %d, %s) was edited: its hash does not match its contents", ErrBroken, n, ln.Seq, ln.Event)
		case ln.Prev != prev:
			return n, fmt.Errorf("%w: line %d (seq %d, %s) does not follow line %d: a line was removed, inserted or edited before it", ErrBroken, n, ln.Seq, ln.Event, n-1)
		case ln.Seq != seq+1:
			return n, fmt.Errorf("%w: line %d has seq %d after %d", ErrBroken, n, ln.Seq, seq)
		}
		prev, seq = ln.Hash, ln.Seq
	}
	if err := sc.Err(); err != nil {
		return n, fmt.Errorf("audit log %s: %w", path, err)
	}
	return n, nil
}
