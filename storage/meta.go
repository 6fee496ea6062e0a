package storage

import (
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
)

// The meta range's records: the cluster's nodes (membership) and the range
// directory. They are replicated records of the meta range (written by its
// log, moved by its snapshots, covered by its consistency checks).

// PutNodeRecord writes a node's record in b.
func PutNodeRecord(b *pebble.Batch, rec *pandopb.NodeRecord) error {
	return putProto(b, MetaNodeKey(rec.Id), rec)
}

// PutDirectoryEntry writes desc in the range directory unless the entry
// there is at a higher or equal generation; it reports whether it wrote.
func PutDirectoryEntry(b *pebble.Batch, desc *pandopb.RangeDescriptor) (bool, error) {
	old := &pandopb.RangeDescriptor{}
	ok, err := getProto(b, MetaRangeKey(desc.Id), old)
	if err != nil || (ok && old.Generation >= desc.Generation) {
		return false, err
	}
	return true, putProto(b, MetaRangeKey(desc.Id), desc)
}

// DeleteDirectoryEntry removes a range from the directory.
func DeleteDirectoryEntry(b *pebble.Batch, id uint64) error {
	return b.Delete(MetaRangeKey(id), nil)
}

// NodeRecords reads every node record.
func NodeRecords(r pebble.Reader) ([]*pandopb.NodeRecord, error) {
	lo, hi := MetaNodeSpan()
	var out []*pandopb.NodeRecord
	err := scanProtos(r, lo, hi, func() proto.Message { return &pandopb.NodeRecord{} }, func(m proto.Message) {
		out = append(out, m.(*pandopb.NodeRecord))
	})
	return out, err
}

// Directory reads every range directory entry, ordered by range ID.
func Directory(r pebble.Reader) ([]*pandopb.RangeDescriptor, error) {
	lo, hi := MetaRangeSpan()
	var out []*pandopb.RangeDescriptor
	err := scanProtos(r, lo, hi, func() proto.Message { return &pandopb.RangeDescriptor{} }, func(m proto.Message) {
		out = append(out, m.(*pandopb.RangeDescriptor))
	})
	return out, err
}

func scanProtos(r pebble.Reader, lo, hi []byte, mk func() proto.Message, f func(proto.Message)) error {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	defer it.Close()
	for valid := it.First(); valid; valid = it.Next() {
		m := mk()
		if err := proto.Unmarshal(it.Value(), m); err != nil {
			return fmt.Errorf("storage: corrupt meta record %x: %w", it.Key(), err)
		}
		f(m)
	}
	return it.Error()
}

// CheckMetaRecord validates one meta record as received from a peer.
func CheckMetaRecord(key, value []byte) error {
	kind, id, err := DecodeMetaKey(key)
	if err != nil {
		return err
	}
	switch kind {
	case metaNode:
		rec := &pandopb.NodeRecord{}
		if err := proto.Unmarshal(value, rec); err != nil || rec.Id != id {
			return fmt.Errorf("storage: node record %x is corrupt or names another node", key)
		}
	case metaRange:
		d := &pandopb.RangeDescriptor{}
		if err := proto.Unmarshal(value, d); err != nil || d.Id != id {
			return fmt.Errorf("storage: directory entry %x is corrupt or names another range", key)
		}
	case metaLease:
		l := &pandopb.LeaseRecord{}
		if err := proto.Unmarshal(value, l); err != nil || uint64(l.Id) != id || l.Id <= 0 || l.Ttl <= 0 {
			return fmt.Errorf("storage: lease record %x is corrupt or names another lease", key)
		}
	}
	return nil
}
