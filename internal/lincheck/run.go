package lincheck

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
)

// Run issues one random operation on key through kvc, writing value: 40%
// linearizable gets, 30% puts, 10% deletes, 20% compare-and-swaps, most
// against the version last read of the key (versions, shared by the
// clients of a run), some against 0 ("absent"). A refused compare-and-swap
// is an answer (Output.Mismatch), not an error. err is the call's error,
// converted with kv.FromStatus; see Effect for what it means.
func Run(ctx context.Context, kvc pandopb.KVClient, rng *rand.Rand, key, value string, versions *sync.Map) (in Input, out Output, err error) {
	in = Input{Key: key, Value: value}
	switch p := rng.IntN(10); {
	case p < 4:
		in.Kind = Get
		var r *pandopb.GetResponse
		if r, err = kvc.Get(ctx, &pandopb.GetRequest{Key: []byte(key)}); err == nil {
			out = Output{Found: r.Found, Value: string(r.Value), Version: r.Version, Revision: r.ModRevision}
			versions.Store(key, r.Version)
		}
	case p < 7:
		in.Kind = Put
		var r *pandopb.PutResponse
		if r, err = kvc.Put(ctx, &pandopb.PutRequest{Key: []byte(key), Value: []byte(value)}); err == nil {
			out.Version, out.Revision = r.Version, r.Revision
		}
	case p < 8:
		in.Kind = Del
		var r *pandopb.DeleteResponse
		if r, err = kvc.Delete(ctx, &pandopb.DeleteRequest{Key: []byte(key)}); err == nil {
			out.Deleted, out.Revision = r.Deleted, r.Revision
		}
	default:
		in.Kind = Cas
		if v, ok := versions.Load(key); ok && rng.IntN(4) > 0 {
			in.Expected = v.(uint64)
		}
		var r *pandopb.PutResponse
		r, err = kvc.Put(ctx, &pandopb.PutRequest{Key: []byte(key), Value: []byte(value), Cas: true, ExpectedVersion: in.Expected})
		var vm *kv.VersionMismatchError
		if err == nil {
			out.Version, out.Revision = r.Version, r.Revision
		} else if errors.As(kv.FromStatus(err), &vm) {
			out.Mismatch, out.Current, err = true, vm.Current, nil
		}
	}
	if err != nil {
		err = kv.FromStatus(err)
	}
	return in, out, err
}

// Effect says what a failed operation means for the history: none (a
// failed read, or a write pando refused before proposing it: unavailable
// and not ambiguous), so it is left out; or unknown (the write may have
// been applied, or may be later), recorded as Output{Unknown: true}.
func Effect(in Input, err error) (unknown bool) {
	if in.Kind == Get {
		return false
	}
	return errors.Is(err, kv.ErrAmbiguous) || !errors.Is(err, kv.ErrUnavailable)
}
