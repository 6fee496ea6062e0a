package storage

import (
	"fmt"
	"io"
	"strings"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// MarkerFile records, outside the database, that a data directory holds
// a node. A database that lost its records (a damaged or truncated
// MANIFEST can make Pebble open an older, emptier state) must never be
// mistaken for a new node and bootstrapped again.
const MarkerFile = "PANDO_NODE"

// ReadMarker returns the node ID the marker in dir names (the file's text
// without surrounding space); an error when there is no marker.
func ReadMarker(fs vfs.FS, dir string) (string, error) {
	f, err := fs.Open(fs.PathJoin(dir, MarkerFile))
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	return strings.TrimSpace(string(b)), err
}

// WriteMarker writes the marker naming node id in dir, replacing any, and
// syncs the file.
func WriteMarker(fs vfs.FS, dir, id string) error {
	path := fs.PathJoin(dir, MarkerFile)
	f, err := fs.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return fmt.Errorf("storage: writing %s: %w", path, err)
	}
	if _, err := f.Write([]byte(id + "\n")); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
