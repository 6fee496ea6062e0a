package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
)

// adminCall runs call against the first endpoint that answers; an answer
// from pando (not a transport failure) ends the search.
func (f *clientFlags) adminCall(call func(context.Context, pandopb.AdminClient) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	var lastErr error
	for _, ep := range f.endpointList() {
		conn, err := f.dial(ep)
		if err != nil {
			return err
		}
		raw := call(ctx, pandopb.NewAdminClient(conn))
		conn.Close()
		if raw == nil {
			return nil
		}
		err = kv.FromStatus(raw)
		lastErr = err
		// Unreachable, or pando unable to serve it there: the next one.
		unreachable := status.Code(raw) == codes.Unavailable || errors.Is(err, kv.ErrUnavailable)
		if !unreachable || ctx.Err() != nil {
			return err
		}
	}
	return lastErr
}

func parseID(s, what string) (uint64, error) {
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil || id == 0 {
		return 0, usageError{fmt.Errorf("%s must be a positive number, not %q", what, s)}
	}
	return id, nil
}

func nodeCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "List and decommission the cluster's nodes"}
	var lf clientFlags
	list := &cobra.Command{
		Use:   "list",
		Short: "Show every node with its state, liveness, replicas and leaders (from the controller)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var resp *pandopb.NodesResponse
			if err := lf.adminCall(func(ctx context.Context, c pandopb.AdminClient) (err error) {
				resp, err = c.Nodes(ctx, &pandopb.NodesRequest{})
				return err
			}); err != nil {
				return err
			}
			if lf.json {
				type nodeJSON struct {
					ID        uint64 `json:"id"`
					Addr      string `json:"addr"`
					State     string `json:"state"`
					Live      bool   `json:"live"`
					Replicas  uint64 `json:"replicas"`
					Leaders   uint64 `json:"leaders"`
					DiskBytes uint64 `json:"disk_bytes"`
				}
				out := struct {
					Controller uint64     `json:"controller_id"`
					Nodes      []nodeJSON `json:"nodes"`
				}{Controller: resp.ControllerId}
				for _, n := range resp.Nodes {
					out.Nodes = append(out.Nodes, nodeJSON{n.Record.Id, n.Record.Addr, n.Record.State, n.Live, n.Replicas, n.Leaders, n.DiskBytes})
				}
				return printJSON(cmd.OutOrStdout(), out)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "NODE\tADDR\tSTATE\tLIVE\tREPLICAS\tLEADERS\tDISK\tLAST HEARTBEAT\n")
			for _, n := range resp.Nodes {
				last := "-"
				if n.LastHeartbeatUnixNanos != 0 {
					last = time.Since(time.Unix(0, n.LastHeartbeatUnixNanos)).Round(time.Millisecond).String() + " ago"
				}
				mark := ""
				if n.Record.Id == resp.ControllerId {
					mark = " (controller)"
				}
				fmt.Fprintf(w, "%d%s\t%s\t%s\t%v\t%d\t%d\t%d\t%s\n", n.Record.Id, mark, n.Record.Addr, n.Record.State, n.Live, n.Replicas, n.Leaders, n.DiskBytes, last)
			}
			return w.Flush()
		},
	}
	lf.add(list, true)
	var df clientFlags
	decom := &cobra.Command{
		Use:   "decommission ID",
		Short: "Drain a node: its replicas and leaderships move away, then it is marked removed and may be stopped",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0], "the node ID")
			if err != nil {
				return err
			}
			var resp *pandopb.DecommissionResponse
			if err := df.adminCall(func(ctx context.Context, c pandopb.AdminClient) (err error) {
				resp, err = c.Decommission(ctx, &pandopb.DecommissionRequest{NodeId: id})
				return err
			}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %d is %s; watch `pando node list` until it is removed, then stop it\n", id, resp.Node.GetState())
			return nil
		},
	}
	df.add(decom, false)
	cmd.AddCommand(list, decom)
	return cmd
}

func rangeCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "range", Short: "Move a range's replicas and leadership, merge ranges"}
	var mf clientFlags
	var from, to uint64
	move := &cobra.Command{
		Use:   "move ID --from N --to M",
		Short: "Move range ID's replica from node N to node M (learner, snapshot, promote, remove)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0], "the range ID")
			if err != nil {
				return err
			}
			if from == 0 && to == 0 {
				return usageError{fmt.Errorf("give --from, --to or both (--from alone removes a replica, --to alone adds one)")}
			}
			var resp *pandopb.MoveReplicaResponse
			if err := mf.adminCall(func(ctx context.Context, c pandopb.AdminClient) (err error) {
				resp, err = c.MoveReplica(ctx, &pandopb.MoveReplicaRequest{RangeId: id, From: from, To: to})
				return err
			}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "range %d is now on nodes %v (generation %d)\n", id, resp.Desc.Replicas, resp.Desc.Generation)
			return nil
		},
	}
	mf.add(move, false)
	move.Flags().Uint64Var(&from, "from", 0, "node losing its replica")
	move.Flags().Uint64Var(&to, "to", 0, "node gaining a replica")
	// A move waits for a snapshot: a longer default deadline.
	move.Flags().Lookup("timeout").DefValue = "5m0s"
	mf.timeout = 5 * time.Minute

	var tf clientFlags
	var target uint64
	transfer := &cobra.Command{
		Use:   "transfer-leader ID --to N",
		Short: "Hand range ID's leadership to node N",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0], "the range ID")
			if err != nil {
				return err
			}
			if target == 0 {
				return usageError{fmt.Errorf("--to is required")}
			}
			if err := tf.adminCall(func(ctx context.Context, c pandopb.AdminClient) error {
				_, err := c.TransferLeader(ctx, &pandopb.TransferLeaderRequest{RangeId: id, To: target})
				return err
			}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %d leads range %d\n", target, id)
			return nil
		},
	}
	tf.add(transfer, false)
	transfer.Flags().Uint64Var(&target, "to", 0, "node to lead the range")

	var gf clientFlags
	merge := &cobra.Command{
		Use:   "merge ID",
		Short: "Merge range ID with its right neighbour (both must be on the same nodes)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0], "the range ID")
			if err != nil {
				return err
			}
			var resp *pandopb.MergeResponse
			if err := gf.adminCall(func(ctx context.Context, c pandopb.AdminClient) (err error) {
				resp, err = c.Merge(ctx, &pandopb.MergeRequest{RangeId: id})
				return err
			}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "range %d is now [%q, %s)\n", id, resp.Desc.StartKey, endText(resp.Desc.EndKey))
			return nil
		},
	}
	gf.add(merge, false)
	cmd.AddCommand(move, transfer, merge)
	return cmd
}

func rebalanceCmd() *cobra.Command {
	var f clientFlags
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "rebalance [--dry-run]",
		Short: "Show (--dry-run) or start the operations the placement controller plans now",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var resp *pandopb.RebalanceResponse
			if err := f.adminCall(func(ctx context.Context, c pandopb.AdminClient) (err error) {
				resp, err = c.Rebalance(ctx, &pandopb.RebalanceRequest{DryRun: dryRun})
				return err
			}); err != nil {
				return err
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), resp.Ops)
			}
			verb := "starting"
			if dryRun {
				verb = "would do"
			}
			if len(resp.Ops) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "controller (node %d): balanced, nothing to do\n", resp.ControllerId)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "controller (node %d) %s:\n", resp.ControllerId, verb)
			for _, op := range resp.Ops {
				fmt.Fprintf(cmd.OutOrStdout(), "  %s\n", opText(op))
			}
			return nil
		},
	}
	f.add(cmd, true)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only print the plan")
	return cmd
}

func opText(op *pandopb.PlannedOp) string {
	var what string
	switch op.Kind {
	case "move-replica", "transfer-leader":
		what = fmt.Sprintf("%s range %d: node %d -> node %d", op.Kind, op.RangeId, op.From, op.To)
	case "add-replica":
		what = fmt.Sprintf("add-replica range %d: on node %d", op.RangeId, op.To)
	case "remove-replica":
		what = fmt.Sprintf("remove-replica range %d: from node %d", op.RangeId, op.From)
	case "merge":
		what = fmt.Sprintf("merge range %d with range %d", op.RangeId, op.RightId)
	default:
		what = fmt.Sprintf("%s range %d", op.Kind, op.RangeId)
	}
	if op.Reason != "" {
		what += " (" + op.Reason + ")"
	}
	return what
}
