package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/pando/pando/client"
	"github.com/pando/pando/internal/httpapi"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/lease"
)

// pando lease: etcdctl lease's verbs and wording, IDs in decimal. --json
// prints the HTTP API's answers (IDs as decimal strings).

// reportedError is an error the command has printed already (on standard
// error, in its own words): main exits with its status and prints nothing.
type reportedError struct{ error }

func (r reportedError) Unwrap() error { return r.error }

func leaseCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lease",
		Short: "Grant, keep alive, revoke and inspect leases (keys attached to a lease are deleted with it)",
		Long: `Leases, as etcdctl lease has them. A key written with pando put KEY VALUE --lease ID
(or put KEY VALUE --lease=ID in pando txn) is deleted when the lease expires or is
revoked. A lease expires when not kept alive for its TTL.

  pando lease grant 30          lease 1234 granted with TTL(30s)
  pando put svc/a up --lease 1234
  pando lease keep-alive 1234   renews until interrupted (--once: one renewal)
  pando lease ttl 1234 --keys   lease 1234 granted with TTL(30s), remaining(28s), attached keys([svc/a])
  pando lease list              found 1 leases, then one ID a line
  pando lease revoke 1234       lease 1234 revoked (svc/a is deleted)

A lease that does not exist exits with status 1; a malformed TTL or ID with status 2.`,
	}
	cmd.AddCommand(leaseGrantCmd(), leaseKeepAliveCmd(), leaseRevokeCmd(), leaseTTLCmd(), leaseListCmd())
	return cmd
}

// parseLeaseArg reads a lease ID argument (decimal, positive).
func parseLeaseArg(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, usageError{fmt.Errorf("lease ID must be a positive decimal number, not %q", s)}
	}
	return id, nil
}

func leaseGrantCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "grant TTL",
		Short: "Grant a lease of TTL seconds and print its ID",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			secs, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil {
				return usageError{fmt.Errorf("TTL must be a whole number of seconds, not %q", args[0])}
			}
			if err := lease.CheckTTL(secs); err != nil {
				return usageError{err}
			}
			c, ctx, cancel, err := f.open()
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			l, err := c.Grant(ctx, time.Duration(secs)*time.Second)
			if err != nil {
				return err
			}
			ttl := int64(l.TTL / time.Second)
			if f.json {
				return printJSON(cmd.OutOrStdout(), httpapi.LeaseGrantAnswer{ID: httpapi.LeaseID(l.ID), TTL: ttl})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lease %d granted with TTL(%ds)\n", l.ID, ttl)
			return nil
		},
	}
	f.add(cmd, true)
	return cmd
}

func leaseKeepAliveCmd() *cobra.Command {
	var f clientFlags
	var once bool
	cmd := &cobra.Command{
		Use:   "keep-alive ID [--once]",
		Short: "Keep a lease alive until interrupted or the lease is gone (--once: renew it once)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseLeaseArg(args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			print := func(ttl time.Duration) {
				if f.json {
					// One compact object a line: a stream of renewals.
					fmt.Fprintf(out, "{\"id\":\"%d\",\"ttl\":%d}\n", id, int64(ttl/time.Second))
					return
				}
				fmt.Fprintf(out, "lease %d keepalived with TTL(%d)\n", id, int64(ttl/time.Second))
			}
			gone := func(err error) error {
				fmt.Fprintf(cmd.ErrOrStderr(), "lease %d expired or revoked.\n", id)
				return reportedError{err}
			}
			if once {
				c, ctx, cancel, err := f.open()
				if err != nil {
					return err
				}
				defer cancel()
				defer c.Close()
				ttl, err := c.KeepAliveOnce(ctx, id)
				if errors.Is(err, kv.ErrLeaseNotFound) {
					return gone(err)
				}
				if err != nil {
					return err
				}
				print(ttl)
				return nil
			}
			c, ctx, cancel, err := f.openStream(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			// Renewals every third of the TTL, until interrupted (the first
			// at once: an unknown lease is reported before anything runs).
			renewals, err := c.KeepAlive(ctx, id)
			if errors.Is(err, kv.ErrLeaseNotFound) {
				return gone(err)
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil // interrupted
				}
				return err
			}
			for r := range renewals {
				print(r.TTL)
			}
			if ctx.Err() != nil {
				return nil // interrupted: the lease lives on for its TTL
			}
			return gone(fmt.Errorf("%w: lease %d", kv.ErrLeaseNotFound, id))
		},
	}
	f.add(cmd, true)
	cmd.Flags().BoolVar(&once, "once", false, "renew the lease once and exit")
	return cmd
}

func leaseRevokeCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a lease, deleting every key attached to it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseLeaseArg(args[0])
			if err != nil {
				return err
			}
			c, ctx, cancel, err := f.open()
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			if err := c.Revoke(ctx, id); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lease %d revoked\n", id)
			return nil
		},
	}
	f.add(cmd, false)
	return cmd
}

func leaseTTLCmd() *cobra.Command {
	var f clientFlags
	var keys bool
	cmd := &cobra.Command{
		Use:   "ttl ID [--keys]",
		Short: "Print a lease's granted and remaining TTL (--keys: and the keys attached to it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseLeaseArg(args[0])
			if err != nil {
				return err
			}
			c, ctx, cancel, err := f.open()
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			t, err := c.TimeToLive(ctx, id, keys)
			if err != nil {
				return err
			}
			if f.json {
				ans := httpapi.LeaseTTLAnswer{ID: httpapi.LeaseID(id), TTL: int64(t.TTL / time.Second), GrantedTTL: int64(t.GrantedTTL / time.Second)}
				if keys {
					ans.Keys = append([][]byte{}, t.Keys...)
				}
				return printJSON(cmd.OutOrStdout(), ans)
			}
			return printLeaseTTL(cmd.OutOrStdout(), id, t, keys)
		},
	}
	f.add(cmd, true)
	cmd.Flags().BoolVar(&keys, "keys", false, "list the keys attached to the lease")
	return cmd
}

// printLeaseTTL prints as etcdctl lease timetolive does.
func printLeaseTTL(w io.Writer, id int64, t *client.LeaseTTL, keys bool) error {
	fmt.Fprintf(w, "lease %d granted with TTL(%ds), remaining(%ds)", id, int64(t.GrantedTTL/time.Second), int64(t.TTL/time.Second))
	if keys {
		ks := make([]string, len(t.Keys))
		for i, k := range t.Keys {
			ks[i] = string(k)
		}
		fmt.Fprintf(w, ", attached keys(%v)", ks)
	}
	_, err := fmt.Fprintln(w)
	return err
}

func leaseListCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the leases that exist",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := f.open()
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			ids, err := c.Leases(ctx)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if f.json {
				ans := httpapi.LeaseListAnswer{Leases: make([]httpapi.LeaseStatus, 0, len(ids))}
				for _, id := range ids {
					ans.Leases = append(ans.Leases, httpapi.LeaseStatus{ID: httpapi.LeaseID(id)})
				}
				return printJSON(out, ans)
			}
			fmt.Fprintf(out, "found %d leases\n", len(ids))
			for _, id := range ids {
				fmt.Fprintln(out, id)
			}
			return nil
		},
	}
	f.add(cmd, true)
	return cmd
}
