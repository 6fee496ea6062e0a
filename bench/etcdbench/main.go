// Command etcdbench runs one etcd member (embedded, go.etcd.io/etcd/server/v3/embed) or
// loads an etcd cluster with go.etcd.io/etcd/client/v3, with the same flags and output
// as `pando bench`, so that bench/compare.sh can measure pando and etcd side by side.
//
//	etcdbench member --name m1 --data-dir d1 \
//	  --client-url http://127.0.0.1:2379 --peer-url http://127.0.0.1:2380 \
//	  --initial-cluster m1=http://127.0.0.1:2380,m2=http://127.0.0.1:22380,m3=http://127.0.0.1:32380
//	etcdbench load --workload put --clients 64 --conns 8 --keys 100000 --value-size 256 \
//	  --duration 20s --endpoints 127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379 --json
//	etcdbench status --endpoint 127.0.0.1:2379 --defrag --db-file d1/member/snap/db
//
// It lives in its own Go module (bench/go.mod) so that the pando module never depends on
// the etcd server.
package main

import (
	"fmt"
	"os"
)

const usage = `usage:
  etcdbench member [flags]   run one etcd member until SIGINT/SIGTERM
  etcdbench load [flags]     load an etcd cluster; same flags and output as 'pando bench'
  etcdbench status [flags]   one member's revision and backend size (--defrag: defragment first)
Run 'etcdbench member -h', 'etcdbench load -h' or 'etcdbench status -h' for the flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "member":
		err = runMember(os.Args[2:])
	case "load", "bench":
		err = runLoad(os.Args[2:])
	case "status":
		err = runStatus(os.Args[2:])
	case "-h", "--help", "help":
		fmt.Fprint(os.Stdout, usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "etcdbench: unknown subcommand %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcdbench %s: %v\n", os.Args[1], err)
		if _, ok := err.(usageError); ok {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type usageError struct{ error }
