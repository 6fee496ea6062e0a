package storage_test

import (
	"errors"
	"io"
	"os"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/pando/pando/storage"
)

func TestMarker(t *testing.T) {
	fs := vfs.NewMem()
	if err := fs.MkdirAll(testDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if id, err := storage.ReadMarker(fs, testDir); !errors.Is(err, os.ErrNotExist) || id != "" {
		t.Fatalf("no marker yet: %q %v", id, err)
	}
	if err := storage.WriteMarker(fs, testDir, "12"); err != nil {
		t.Fatal(err)
	}
	// The file is the node's ID on a line, for an operator to read too.
	f, err := fs.Open(fs.PathJoin(testDir, storage.MarkerFile))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(f)
	f.Close()
	if string(b) != "12\n" {
		t.Fatalf("marker file holds %q", b)
	}
	if id, err := storage.ReadMarker(fs, testDir); err != nil || id != "12" {
		t.Fatalf("marker reads %q %v", id, err)
	}
	// Rewriting replaces it; space around the ID (an edited file) is not part of it.
	if err := storage.WriteMarker(fs, testDir, " 3 \n"); err != nil {
		t.Fatal(err)
	}
	if id, err := storage.ReadMarker(fs, testDir); err != nil || id != "3" {
		t.Fatalf("rewritten marker reads %q %v", id, err)
	}
	if err := storage.WriteMarker(fs, "/missing", "1"); err == nil {
		t.Fatal("a marker was written into a directory that does not exist")
	}
}
