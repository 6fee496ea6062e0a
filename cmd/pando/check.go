package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/dashboard"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/storage"
)

// errDiverged makes `pando check` exit non-zero (6) when replicas diverged.
var errDiverged = errors.New("pando: replicas diverged")

func checkCmd() *cobra.Command {
	var f clientFlags
	var rangeID uint64
	var repair, noRepair bool
	cmd := &cobra.Command{
		Use:   "check [--range ID]",
		Short: "Compare the replicas of every range (or one); report and repair divergence (exit status 6 when found)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if repair && noRepair {
				return usageError{fmt.Errorf("--repair and --no-repair exclude each other")}
			}
			if f.timeout == 5*time.Second {
				f.timeout = 10 * time.Minute
			}
			ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
			defer cancel()
			var resp *pandopb.CheckResponse
			var lastErr error
			for _, ep := range strings.Split(f.endpoints, ",") {
				conn, err := f.dial(strings.TrimSpace(ep))
				if err != nil {
					return err
				}
				resp, err = pandopb.NewCheckerClient(conn).Check(ctx, &pandopb.CheckRequest{RangeId: rangeID, Repair: repair, NoRepair: noRepair})
				conn.Close()
				if err == nil {
					break
				}
				lastErr = kv.FromStatus(err)
			}
			if resp == nil {
				return lastErr
			}
			if f.json {
				if err := printJSON(cmd.OutOrStdout(), checkJSON(resp)); err != nil {
					return err
				}
			} else {
				printCheck(cmd, resp)
			}
			for _, r := range resp.Ranges {
				if len(r.Diverged) > 0 || r.Verdict != "consistent" || len(r.Missing) > 0 {
					return errDiverged
				}
			}
			return nil
		},
	}
	f.add(cmd, true)
	cmd.Flags().Uint64Var(&rangeID, "range", 0, "check only this range")
	cmd.Flags().BoolVar(&repair, "repair", false, "repair diverged replicas even if the cluster's auto-repair is off")
	cmd.Flags().BoolVar(&noRepair, "no-repair", false, "only report; do not repair")
	return cmd
}

type keyDiffJSON struct {
	Key      string           `json:"key"`
	Replicas []replicaKeyJSON `json:"replicas"`
}

type replicaKeyJSON struct {
	Node      uint64 `json:"node"`
	Version   uint64 `json:"version"`
	ValueHash string `json:"value_hash,omitempty"`
}

type rangeCheckJSON struct {
	Range        uint64        `json:"range"`
	Index        uint64        `json:"index"`
	Verdict      string        `json:"verdict"`
	Checked      []uint64      `json:"checked"`
	Missing      []uint64      `json:"missing,omitempty"`
	Diverged     []uint64      `json:"diverged,omitempty"`
	Keys         []keyDiffJSON `json:"keys,omitempty"`
	RepairedKeys uint64        `json:"repaired_keys"`
	Error        string        `json:"error,omitempty"`
}

// displayKey shows a record key: user keys quoted, internal records in hex.
func displayKey(k []byte) string {
	if uk, err := storage.UserKey(k); err == nil {
		return fmt.Sprintf("%q", uk)
	}
	return fmt.Sprintf("(internal %x)", k)
}

func checkJSON(resp *pandopb.CheckResponse) []rangeCheckJSON {
	var out []rangeCheckJSON
	for _, r := range resp.Ranges {
		rc := rangeCheckJSON{Range: r.RangeId, Index: r.Index, Verdict: r.Verdict, Checked: r.Checked, Missing: r.Missing, Diverged: r.Diverged, RepairedKeys: r.RepairedKeys, Error: r.Error}
		for _, k := range r.Keys {
			d := keyDiffJSON{Key: displayKey(k.Key)}
			for _, rk := range k.Replicas {
				h := ""
				if rk.Version != 0 || rk.ValueHash != 0 {
					h = fmt.Sprintf("%016x", rk.ValueHash)
				}
				d.Replicas = append(d.Replicas, replicaKeyJSON{Node: rk.NodeId, Version: rk.Version, ValueHash: h})
			}
			rc.Keys = append(rc.Keys, d)
		}
		out = append(out, rc)
	}
	return out
}

func printCheck(cmd *cobra.Command, resp *pandopb.CheckResponse) {
	w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	for _, r := range checkJSON(resp) {
		fmt.Fprintf(w, "range %d at index %d: %s (replicas checked %v)\n", r.Range, r.Index, r.Verdict, r.Checked)
		if len(r.Missing) > 0 {
			fmt.Fprintf(w, "  replicas that did not answer (nodes): %v\n", r.Missing)
		}
		if len(r.Diverged) > 0 {
			fmt.Fprintf(w, "  diverged replicas (nodes): %v\n", r.Diverged)
		}
		if len(r.Keys) > 0 {
			fmt.Fprintf(w, "  KEY\tNODE\tVERSION\tVALUE HASH\n")
			for _, k := range r.Keys {
				for _, rk := range k.Replicas {
					ver, h := fmt.Sprint(rk.Version), rk.ValueHash
					if rk.Version == 0 && h == "" {
						ver, h = "absent", "-"
					}
					fmt.Fprintf(w, "  %s\t%d\t%s\t%s\n", k.Key, rk.Node, ver, h)
				}
			}
		}
		if r.RepairedKeys > 0 || r.Verdict == "repaired" {
			fmt.Fprintf(w, "  repaired: %d keys rewritten on %v\n", r.RepairedKeys, r.Diverged)
		}
		if r.Error != "" {
			fmt.Fprintf(w, "  error: %s\n", r.Error)
		}
	}
	w.Flush()
}

func rangesCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "ranges",
		Short: "List every range with its span, replicas, leader and last consistency check",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := f.open()
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			resp, err := c.Status(ctx, "")
			if err != nil {
				return err
			}
			js := dashboard.StatusToJSON(resp)
			if f.json {
				return printJSON(cmd.OutOrStdout(), js.Ranges)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "RANGE\tSTART\tEND\tREPLICAS\tLEADER\tTERM\tAPPLIED\tSIZE\tQPS\tLAST CHECK\n")
			for _, r := range js.Ranges {
				end := fmt.Sprintf("%q", r.EndKey)
				if r.EndKey == "" {
					end = "(end)"
				}
				last := "never"
				if lc := r.LastCheck; lc != nil {
					last = fmt.Sprintf("%s at index %d, %s", lc.Verdict, lc.Index, lc.Time.Local().Format(time.DateTime))
					if len(lc.Diverged) > 0 {
						last += fmt.Sprintf(" (diverged %v, %d keys, %d repaired)", lc.Diverged, lc.DifferingKeys, lc.RepairedKeys)
					}
				}
				fmt.Fprintf(w, "%d\t%q\t%s\t%v\t%d\t%d\t%d\t%d\t%.0f\t%s\n", r.ID, r.StartKey, end, r.Replicas, r.LeaderID, r.Term, r.AppliedIndex, r.SizeBytes, r.QPS, last)
			}
			return w.Flush()
		},
	}
	f.add(cmd, true)
	return cmd
}

func debugCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "debug",
		Short: "DANGEROUS: change or dump one stopped replica's stored data directly, bypassing Raft",
		Long: `DANGEROUS. These commands read or change one replica's data directly in its data
directory, bypassing Raft, while its node is stopped. A changed replica disagrees with the
others until a consistency check (pando check) finds and repairs it. They exist to rehearse
divergence and to inspect a replica; never use write or delete on a cluster you care about.`,
	}
	var dataDir string
	var rangeID, version uint64
	open := func() (*storage.Engine, error) {
		if dataDir == "" {
			return nil, usageError{fmt.Errorf("--data-dir is required")}
		}
		if _, err := os.Stat(dataDir); err != nil {
			return nil, usageError{fmt.Errorf("--data-dir: %w", err)}
		}
		e, err := storage.Open(dataDir, storage.Options{})
		if err != nil {
			return nil, fmt.Errorf("%w (is the node still running?)", err)
		}
		return e, nil
	}
	write := &cobra.Command{
		Use:   "write --data-dir DIR --range ID KEY VALUE",
		Short: "Set KEY to VALUE in one replica only (keeps the key's version unless --version)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := open()
			if err != nil {
				return err
			}
			defer e.Close()
			ver, err := storage.DebugWrite(e, rangeID, []byte(args[0]), []byte(args[1]), version)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %q = %q (version %d) in range %d of %s, bypassing Raft\n", args[0], args[1], ver, rangeID, dataDir)
			return nil
		},
	}
	write.Flags().Uint64Var(&version, "version", 0, "version to store (default: keep the key's current one, or 1)")
	del := &cobra.Command{
		Use:   "delete --data-dir DIR --range ID KEY",
		Short: "Remove KEY from one replica only",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := open()
			if err != nil {
				return err
			}
			defer e.Close()
			if err := storage.DebugDelete(e, rangeID, []byte(args[0])); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %q from range %d of %s, bypassing Raft\n", args[0], rangeID, dataDir)
			return nil
		},
	}
	dump := &cobra.Command{
		Use:   "dump --data-dir DIR",
		Short: "Print a replica's ranges and data",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, err := open()
			if err != nil {
				return err
			}
			defer e.Close()
			return storage.Dump(e, cmd.OutOrStdout())
		},
	}
	var usageJSON bool
	usage := &cobra.Command{
		Use:   "disk-usage --data-dir DIR [--json]",
		Short: "Measure a stopped node's database on disk, by kind of key (flushes and compacts it first)",
		Long: `Measure a stopped node's database: the table and write-ahead log files as the node
left them, then, once the memtable is flushed and the whole key space compacted (overwritten
and deleted records dropped; the data itself is unchanged), the live tables' bytes and each
kind of key's share: the Raft log, the ranges' other records, the latest records, the
history. state_bytes is the tables less the Raft log (bench/history-bytes.sh).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dataDir == "" {
				return usageError{fmt.Errorf("--data-dir is required")}
			}
			sst, wal, err := storage.DirFileSizes(dataDir)
			if err != nil {
				return usageError{fmt.Errorf("--data-dir: %w", err)}
			}
			e, err := open()
			if err != nil {
				return err
			}
			defer e.Close()
			u, err := storage.MeasureDiskUsage(context.Background(), e)
			if err != nil {
				return err
			}
			u.FilesSST, u.FilesWAL = sst, wal
			if usageJSON {
				return printJSON(cmd.OutOrStdout(), u)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintf(w, "as left: table files\t%d\tbytes\t\nas left: write-ahead log\t%d\tbytes\t\ncompacted: live tables\t%d\tbytes\t\n\n", u.FilesSST, u.FilesWAL, u.Tables)
			fmt.Fprintf(w, "KIND\tKEYS\tKEY+VALUE BYTES\tDISK BYTES (EST.)\t\n")
			for _, k := range []struct {
				name string
				ku   storage.KindUsage
			}{{"raft log", u.RaftLog}, {"range-local", u.RangeLocal}, {"latest", u.Latest}, {"history", u.History}, {"other", u.Other}} {
				fmt.Fprintf(w, "%s\t%d\t%d\t%d\t\n", k.name, k.ku.Keys, k.ku.Logical, k.ku.Disk)
			}
			fmt.Fprintf(w, "\nstate (tables less the raft log)\t%d\tbytes\t\n", u.State)
			return w.Flush()
		},
	}
	usage.Flags().BoolVar(&usageJSON, "json", false, "print JSON")
	for _, c := range []*cobra.Command{write, del, dump, usage} {
		c.Flags().StringVar(&dataDir, "data-dir", "", "the stopped node's data directory")
	}
	for _, c := range []*cobra.Command{write, del} {
		c.Flags().Uint64Var(&rangeID, "range", 1, "range the key belongs to")
	}
	cmd.AddCommand(write, del, dump, usage)
	return cmd
}

func splitCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "split KEY",
		Short: "Split the range holding KEY so that a new range starts at KEY",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var resp *pandopb.SplitResponse
			if err := f.adminCall(func(ctx context.Context, c pandopb.AdminClient) (err error) {
				resp, err = c.Split(ctx, &pandopb.SplitRequest{Key: []byte(args[0])})
				return err
			}); err != nil {
				return err
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), map[string]any{"left": descJSON(resp.Left), "right": descJSON(resp.Right)})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "split: range %d is now [%q, %q), new range %d is [%q, %s)\n",
				resp.Left.Id, resp.Left.StartKey, resp.Left.EndKey, resp.Right.Id, resp.Right.StartKey, endText(resp.Right.EndKey))
			return nil
		},
	}
	f.add(cmd, true)
	return cmd
}

func endText(k []byte) string {
	if len(k) == 0 {
		return "(end)"
	}
	return fmt.Sprintf("%q", k)
}

func descJSON(d *pandopb.RangeDescriptor) map[string]any {
	return map[string]any{"id": d.Id, "start_key": string(d.StartKey), "end_key": string(d.EndKey), "replicas": d.Replicas, "generation": d.Generation}
}
