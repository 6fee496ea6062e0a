package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// statusResult is one member's backend size (bench/history-bytes.sh).
type statusResult struct {
	Endpoint     string `json:"endpoint"`
	Revision     int64  `json:"revision"`
	Defragmented bool   `json:"defragmented"`
	// DBSize is the backend (bbolt) file's size, DBSizeInUse the part of it
	// that its pages in use take (the rest is free pages that new writes
	// reuse; a defragmentation gives it back).
	DBSize      int64 `json:"db_size_bytes"`
	DBSizeInUse int64 `json:"db_size_in_use_bytes"`
	// With --db-file: that file's size and the blocks allocated to it
	// (bbolt grows its file ahead of its writes, so it may be sparse).
	FileSize      int64 `json:"db_file_bytes,omitempty"`
	FileAllocated int64 `json:"db_file_allocated_bytes,omitempty"`
}

// runStatus prints one member's revision and backend size, after a
// defragmentation with --defrag (etcdctl defrag's Maintenance.Defragment).
func runStatus(args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	var (
		endpoint = fs.String("endpoint", "127.0.0.1:2379", "the member's client address")
		defrag   = fs.Bool("defrag", false, "defragment the member's backend first")
		dbFile   = fs.String("db-file", "", "also report this file's size and allocated blocks (the member's DATA-DIR/member/snap/db)")
		timeout  = fs.Duration("timeout", 5*time.Minute, "deadline of the defragmentation and the status")
		settle   = fs.Duration("settle", 300*time.Millisecond, "report once the sizes have not changed for this long (0: at once)")
	)
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected arguments %q", fs.Args())}
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{*endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return usageError{err}
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if *defrag {
		if _, err := c.Defragment(ctx, *endpoint); err != nil {
			return fmt.Errorf("defragment %s: %w", *endpoint, err)
		}
	}
	// The member notes its backend's sizes when it begins a backend
	// transaction, which it commits every 100 ms (etcd's batch interval)
	// while writes come: just after a load the sizes lag its last writes.
	// Wait until they stay put.
	st, err := c.Status(ctx, *endpoint)
	for last := time.Now(); err == nil && *settle > 0 && time.Since(last) < *settle; {
		time.Sleep(min(*settle/3, 100*time.Millisecond))
		var next *clientv3.StatusResponse
		if next, err = c.Status(ctx, *endpoint); err == nil && (next.DbSize != st.DbSize || next.DbSizeInUse != st.DbSizeInUse || next.Header.Revision != st.Header.Revision) {
			st, last = next, time.Now()
		}
	}
	if err != nil {
		return fmt.Errorf("status of %s: %w", *endpoint, err)
	}
	res := statusResult{Endpoint: *endpoint, Revision: st.Header.Revision, Defragmented: *defrag, DBSize: st.DbSize, DBSizeInUse: st.DbSizeInUse}
	if *dbFile != "" {
		fi, err := os.Stat(*dbFile)
		if err != nil {
			return usageError{fmt.Errorf("--db-file: %w", err)}
		}
		res.FileSize = fi.Size()
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
			res.FileAllocated = sys.Blocks * 512
		}
	}
	b, _ := json.MarshalIndent(res, "", "  ")
	fmt.Println(string(b))
	return nil
}
