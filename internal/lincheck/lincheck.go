// Package lincheck is the linearizability model of pando's key-value API
// for porcupine, and the history that tests record against it: the
// in-process fault tests (internal/cluster) and the real-process network
// tests (cmd/pando) check their clients' histories with it.
//
// Each key is a register with versions: a write's version is chosen by the
// store (so it is read from the output), must grow, and is what
// compare-and-swap compares. A write whose outcome the client does not
// know (Output.Unknown) may take effect at any time after its call, or
// never.
package lincheck

import (
	"cmp"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// Kind is an operation's kind.
type Kind int

const (
	Get Kind = iota
	Put
	Del
	Cas
)

// Input is an operation as called.
type Input struct {
	Kind     Kind
	Key      string
	Value    string
	Expected uint64 // Cas: the version compared (0: the key is absent)
}

// Output is an operation's answer.
type Output struct {
	Unknown  bool // the write's outcome is unknown
	Found    bool
	Value    string
	Version  uint64
	Mismatch bool   // Cas refused
	Current  uint64 // the version a refused Cas found
	Deleted  bool
	// Revision is a write's revision (a delete's when it deleted), or the
	// mod revision a Get found; 0: not known (not checked).
	Revision uint64
}

// state is one key's state; verKnown is false after a write whose outcome
// (and so version) is unknown, until a read observes it.
type state struct {
	present  bool
	value    string
	version  uint64
	verKnown bool
	// rev is the key's mod revision when known (0: not known or none).
	rev uint64
}

// Model is the porcupine model of a versioned register per key.
var Model = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(Input).Key
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, ops := range byKey {
			out = append(out, ops)
		}
		return out
	},
	Init: func() interface{} { return state{verKnown: true} },
	Step: func(s, i, o interface{}) (bool, interface{}) {
		st, in, out := s.(state), i.(Input), o.(Output)
		matches := func(expected uint64) bool {
			if !st.present {
				return expected == 0
			}
			return !st.verKnown || st.version == expected
		}
		written := func() state {
			if out.Unknown {
				return state{present: true, value: in.Value}
			}
			return state{present: true, value: in.Value, version: out.Version, verKnown: true, rev: out.Revision}
		}
		// A known write's version grows, and so does its revision.
		grows := func() bool {
			return out.Unknown || ((!st.verKnown || out.Version > st.version) && (out.Revision == 0 || st.rev == 0 || out.Revision > st.rev))
		}
		switch in.Kind {
		case Get:
			if !out.Found {
				return !st.present, st
			}
			if !st.present || st.value != out.Value || (st.verKnown && st.version != out.Version) ||
				(st.verKnown && st.rev != 0 && out.Revision != 0 && st.rev != out.Revision) {
				return false, st
			}
			return true, state{present: true, value: out.Value, version: out.Version, verKnown: true, rev: max(out.Revision, st.rev)}
		case Put:
			return grows(), written()
		case Del:
			if !out.Unknown && out.Deleted != st.present {
				return false, st
			}
			if out.Unknown || !st.verKnown {
				return true, state{verKnown: true}
			}
			if out.Deleted && out.Revision != 0 && st.rev != 0 && out.Revision <= st.rev {
				return false, st
			}
			return true, state{verKnown: true, rev: max(st.rev, out.Revision)}
		case Cas:
			if out.Unknown {
				if matches(in.Expected) {
					return true, written()
				}
				return true, st
			}
			if out.Mismatch {
				cur := uint64(0)
				if st.present {
					cur = st.version
				}
				if st.present && !st.verKnown {
					return out.Current != in.Expected && out.Current != 0, state{present: true, value: st.value, version: out.Current, verKnown: true}
				}
				return cur == out.Current && cur != in.Expected, st
			}
			return matches(in.Expected) && grows(), written()
		}
		return false, st
	},
	DescribeOperation: func(i, o interface{}) string {
		in, out := i.(Input), o.(Output)
		res := fmt.Sprintf("found=%v %q v%d", out.Found, out.Value, out.Version)
		if out.Unknown {
			res = "unknown"
		} else if out.Mismatch {
			res = fmt.Sprintf("mismatch current=%d", out.Current)
		}
		switch in.Kind {
		case Get:
			return fmt.Sprintf("get(%s) -> %s", in.Key, res)
		case Put:
			return fmt.Sprintf("put(%s, %s) -> %s", in.Key, in.Value, res)
		case Del:
			return fmt.Sprintf("del(%s) -> deleted=%v %s", in.Key, out.Deleted, res)
		default:
			return fmt.Sprintf("cas(%s, %d, %s) -> %s", in.Key, in.Expected, in.Value, res)
		}
	},
	DescribeState: func(s interface{}) string {
		st := s.(state)
		if !st.present {
			return "absent"
		}
		return fmt.Sprintf("%q v%d known=%v", st.value, st.version, st.verKnown)
	},
}

// History records operations from many clients at once.
type History struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation
}

// NewHistory starts a history now.
func NewHistory() *History { return &History{start: time.Now()} }

// Add records one operation of client, called at call and answered at ret.
func (h *History) Add(client int, in Input, call, ret time.Time, out Output) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := ret.Sub(h.start).Nanoseconds()
	if out.Unknown {
		r = math.MaxInt64 // may take effect at any time after the call
	}
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call.Sub(h.start).Nanoseconds(), Output: out, Return: r})
}

// Operations returns a copy of the operations recorded so far.
func (h *History) Operations() []porcupine.Operation {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]porcupine.Operation(nil), h.ops...)
}

// Counts returns how many operations were recorded and how many of them
// have a known outcome.
func (h *History) Counts() (all, known int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, op := range h.ops {
		if !op.Output.(Output).Unknown {
			known++
		}
	}
	return len(h.ops), known
}

// Check checks ops against Model for at most timeout. A history that is
// not linearizable is drawn to dir/name.html (dir: PANDO_ARTIFACTS, else
// fallbackDir) and reported with that path.
//
// It also checks the revisions the history carries (CheckRevisions).
func Check(ops []porcupine.Operation, timeout time.Duration, fallbackDir, name string) error {
	if err := CheckRevisions(ops); err != nil {
		return err
	}
	res, info := porcupine.CheckOperationsVerbose(Model, ops, timeout)
	if res == porcupine.Ok {
		return nil
	}
	dir := os.Getenv("PANDO_ARTIFACTS")
	if dir == "" {
		dir = fallbackDir
	}
	path := filepath.Join(dir, name+".html")
	if err := porcupine.VisualizePath(Model, info, path); err != nil {
		return fmt.Errorf("history is not linearizable (result %v); drawing it failed: %v", res, err)
	}
	return fmt.Errorf("history is not linearizable (result %v); visualization: %s", res, path)
}

// CheckRevisions checks the revision order over all keys of a history: a
// write acknowledged before another write was called has the lower
// revision (whichever keys and ranges they touch), no two writes share a
// revision, and a read that began after a write to its key was
// acknowledged finds that key at a mod revision at least the write's (or
// the key deleted since). Operations without a revision are skipped.
func CheckRevisions(ops []porcupine.Operation) error {
	var writes []ackedWrite
	byRev := map[uint64]string{}
	for _, op := range ops {
		in, out := op.Input.(Input), op.Output.(Output)
		if out.Unknown || out.Revision == 0 || in.Kind == Get || out.Mismatch {
			continue
		}
		d := Model.DescribeOperation(in, out)
		if prev, dup := byRev[out.Revision]; dup {
			return fmt.Errorf("revision %d was given to two writes: %s and %s", out.Revision, prev, d)
		}
		byRev[out.Revision] = d
		writes = append(writes, ackedWrite{op.Call, op.Return, out.Revision, d, in.Key})
	}
	all := newAcked(writes)
	for _, b := range writes {
		if a, ok := all.highestBefore(b.call); ok && a.rev >= b.rev {
			return fmt.Errorf("revisions out of real-time order: %s (revision %d) was acknowledged before %s (revision %d) was called", a.desc, a.rev, b.desc, b.rev)
		}
	}
	perKey := map[string][]ackedWrite{}
	for _, x := range writes {
		perKey[x.key] = append(perKey[x.key], x)
	}
	byKey := map[string]acked{}
	for k, ws := range perKey {
		byKey[k] = newAcked(ws)
	}
	for _, op := range ops {
		in, out := op.Input.(Input), op.Output.(Output)
		if in.Kind != Get || !out.Found || out.Revision == 0 {
			continue
		}
		if a, ok := byKey[in.Key].highestBefore(op.Call); ok && a.rev > out.Revision {
			return fmt.Errorf("a read of %s called after %s (revision %d) was acknowledged found mod revision %d", in.Key, a.desc, a.rev, out.Revision)
		}
	}
	return nil
}

// ackedWrite is a write with a known revision, as CheckRevisions sees it.
type ackedWrite struct {
	call, ret int64
	rev       uint64
	desc      string
	key       string
}

// acked are writes in the order they returned, with, at each position,
// the index of the highest revision up to it.
type acked struct {
	byRet   []ackedWrite
	highest []int
}

func newAcked(ws []ackedWrite) acked {
	a := acked{byRet: slices.Clone(ws), highest: make([]int, len(ws))}
	slices.SortFunc(a.byRet, func(x, y ackedWrite) int { return cmp.Compare(x.ret, y.ret) })
	for i := range a.byRet {
		a.highest[i] = i
		if i > 0 && a.byRet[a.highest[i-1]].rev > a.byRet[i].rev {
			a.highest[i] = a.highest[i-1]
		}
	}
	return a
}

// highestBefore is the write of the highest revision among those that
// returned before call.
func (a acked) highestBefore(call int64) (ackedWrite, bool) {
	n := sort.Search(len(a.byRet), func(i int) bool { return a.byRet[i].ret >= call })
	if n == 0 {
		return ackedWrite{}, false
	}
	return a.byRet[a.highest[n-1]], true
}
