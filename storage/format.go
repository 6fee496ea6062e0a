package storage

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/cockroachdb/pebble/v2"
)

// FormatVersion is the on-disk layout this binary reads and writes.
// 1: user data records held a version and a value (before revisions);
// 2: records hold mod revision, create revision, version and value, and
// ranges keep their last revision (pando with cluster-wide revisions);
// 3: superseded versions and deletions are kept as history (0x04 keys)
// for reads at a revision; 4: a record may carry a lease (a flag bit in
// its version), ranges keep a lease index (0x06 keys) and the meta range
// lease records. Format 4 reads format 3's data unchanged, so a format 3
// directory is upgraded in place by recording 4 (upgradableFrom).
const FormatVersion = 4

// upgradableFrom is the oldest format this binary upgrades in place.
const upgradableFrom = 3

// formatKey records the data directory's on-disk format version.
var formatKey = []byte("\x00format")

// WriteFormat records FormatVersion in a new data directory.
func WriteFormat(db *pebble.DB) error {
	return db.Set(formatKey, []byte(strconv.Itoa(FormatVersion)), pebble.Sync)
}

// ErrFormat means a data directory holds a layout this binary cannot read.
var ErrFormat = errors.New("storage: unsupported on-disk format")

// CheckFormat refuses a data directory of a node written in another
// on-disk format (one without a format record was written before
// revisions, format 1). It is called for directories that hold a node.
func CheckFormat(db *pebble.DB, dir string) error {
	v, closer, err := db.Get(formatKey)
	got := 1
	switch {
	case errors.Is(err, pebble.ErrNotFound):
	case err != nil:
		return fmt.Errorf("storage: reading the format version: %w", err)
	default:
		got, err = strconv.Atoi(string(v))
		closer.Close()
		if err != nil {
			return fmt.Errorf("%w: data directory %s: format record %q is not a number", ErrFormat, dir, v)
		}
	}
	if got == FormatVersion {
		return nil
	}
	if got >= upgradableFrom && got < FormatVersion {
		if err := WriteFormat(db); err != nil {
			return fmt.Errorf("storage: data directory %s: upgrading format %d to %d: %w", dir, got, FormatVersion, err)
		}
		return nil
	}
	if got < FormatVersion {
		why := "keeps the history of every key"
		if got < 2 {
			why = "adds revisions to every key and keeps their history"
		}
		return fmt.Errorf("%w: data directory %s was written by an older pando (on-disk format %d; this binary reads format %d, which %s), "+
			"and it is not migrated in place; nodes of the two formats cannot serve one cluster either. Keep running the older binary on this cluster, "+
			"or start a new cluster with this one (empty --data-dir on every node, no --join) and copy the keys over while the old one still serves "+
			"(pando scan against the old, pando put against the new)", ErrFormat, dir, got, FormatVersion, why)
	}
	return fmt.Errorf("%w: data directory %s was written by a newer pando (on-disk format %d; this binary reads format %d): run the newer binary", ErrFormat, dir, got, FormatVersion)
}
