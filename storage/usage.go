package storage

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
)

// DiskUsage is what a stopped node's database takes on disk, by kind of
// key (pando debug disk-usage; bench/history-bytes.sh compares the history's
// bytes per revision with etcd's).
type DiskUsage struct {
	// As the node left them, before MeasureDiskUsage opened the database:
	// the table files (*.sst, *.blob) and the write-ahead log (*.log).
	FilesSST uint64 `json:"files_sst_bytes"`
	FilesWAL uint64 `json:"files_wal_bytes"`
	// Tables is the live tables' bytes (and blob files', if any) once the
	// memtable is flushed and the whole key space compacted: overwritten
	// and deleted records gone, what the data itself takes.
	Tables uint64 `json:"tables_bytes"`
	// By kind, in that compacted state: each kind's keys, their keys' and
	// values' bytes (uncompressed), and Pebble's estimate of their bytes on
	// disk (EstimateDiskUsage: whole blocks, compressed).
	RaftLog    KindUsage `json:"raft_log"`    // the ranges' Raft log entries
	RangeLocal KindUsage `json:"range_local"` // the ranges' other records: Raft and applied state, deduplication, meta
	Latest     KindUsage `json:"latest"`      // the user keys' latest records
	History    KindUsage `json:"history"`     // superseded versions and tombstones
	Other      KindUsage `json:"other"`       // the rest (the node's identity); disk bytes: Tables less the kinds above
	// State is Tables less the Raft log's estimate: the state machine's
	// bytes, as etcd's bbolt file holds its state (its log is apart, in
	// its WAL).
	State uint64 `json:"state_bytes"`
}

// KindUsage is one kind of key's share of a database.
type KindUsage struct {
	Keys    uint64 `json:"keys"`
	Logical uint64 `json:"logical_bytes"`
	Disk    uint64 `json:"disk_bytes"`
}

// DirFileSizes sums the sizes of a Pebble directory's table files (*.sst
// and *.blob) and write-ahead log files (*.log).
func DirFileSizes(dir string) (sst, wal uint64, err error) {
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case strings.HasSuffix(path, ".sst"), strings.HasSuffix(path, ".blob"):
			sst += uint64(info.Size())
		case strings.HasSuffix(path, ".log"):
			wal += uint64(info.Size())
		}
		return nil
	})
	return sst, wal, err
}

// MeasureDiskUsage flushes e's memtable, compacts its whole key space and
// measures it by kind (FilesSST and FilesWAL are left to the caller, who
// measures them before opening). It changes how the data is laid out on
// disk, not the data.
func MeasureDiskUsage(ctx context.Context, e *Engine) (DiskUsage, error) {
	var u DiskUsage
	db := e.db
	if err := db.Flush(); err != nil {
		return u, fmt.Errorf("storage: flush: %w", err)
	}
	it, err := db.NewIter(nil)
	if err != nil {
		return u, err
	}
	var first, last []byte
	if it.First() {
		first = bytes.Clone(it.Key())
		it.Last()
		last = bytes.Clone(it.Key())
	}
	if err := it.Close(); err != nil {
		return u, err
	}
	if first == nil {
		return u, nil
	}
	if err := db.Compact(ctx, first, append(last, 0), true); err != nil {
		return u, fmt.Errorf("storage: compact: %w", err)
	}
	m := db.Metrics()
	u.Tables = m.Table.Local.LiveSize + m.BlobFiles.Local.LiveSize

	// Logical sizes, by a walk over every key.
	if it, err = db.NewIter(nil); err != nil {
		return u, err
	}
	for valid := it.First(); valid; valid = it.Next() {
		k := it.Key()
		var ku *KindUsage
		switch {
		case len(k) == 0:
			ku = &u.Other
		case len(k) >= 10 && k[0] == prefixRangeLocal && k[9] == kindLog:
			ku = &u.RaftLog
		case k[0] == prefixRangeLocal:
			ku = &u.RangeLocal
		case k[0] == prefixData:
			ku = &u.Latest
		case k[0] == prefixHistory:
			ku = &u.History
		default:
			ku = &u.Other
		}
		ku.Keys++
		ku.Logical += uint64(len(k) + len(it.Value()))
	}
	if err := it.Close(); err != nil {
		return u, err
	}

	// Disk sizes, by Pebble's estimate over each kind's spans.
	est := db.EstimateDiskUsage
	ids, err := e.RangeIDs()
	if err != nil {
		return u, err
	}
	for _, id := range ids {
		lo, hi := logSpan(id)
		n, err := est(lo, hi)
		if err != nil {
			return u, err
		}
		u.RaftLog.Disk += n
	}
	local, err := est([]byte{prefixRangeLocal}, []byte{prefixRangeLocal + 1})
	if err != nil {
		return u, err
	}
	u.RangeLocal.Disk = local - min(local, u.RaftLog.Disk)
	if u.Latest.Disk, err = est([]byte{prefixData}, []byte{prefixDataEnd}); err != nil {
		return u, err
	}
	if u.History.Disk, err = est([]byte{prefixHistory}, []byte{prefixHistoryEnd}); err != nil {
		return u, err
	}
	known := local + u.Latest.Disk + u.History.Disk
	u.Other.Disk = u.Tables - min(u.Tables, known)
	u.State = u.Tables - min(u.Tables, u.RaftLog.Disk)
	return u, nil
}
