package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/pando/pando/client/concurrency"
	"github.com/pando/pando/lease"
)

// pando elect and pando lock: etcdctl elect's and lock's verbs, on the
// recipes of client/concurrency. Each runs a session (a lease kept alive,
// TTL --ttl) whose key, NAME/<lease ID in hex>, is the candidacy or the
// place in the lock's line: a process that dies releases what it held
// once its lease expires.

// defaultSessionTTL is --ttl's default (etcdctl lock's).
const defaultSessionTTL = 10 * time.Second

// exitStatus makes pando exit with this status, having printed whatever
// it had to say (pando lock exits with its command's).
type exitStatus struct{ code int }

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// ttlFlag is a session TTL: whole seconds, as 10s, 1m or 10 (seconds, as
// etcdctl's --ttl), within the lease TTL bounds.
type ttlFlag struct{ d time.Duration }

func (t *ttlFlag) String() string { return t.d.String() }
func (t *ttlFlag) Type() string   { return "duration" }

func (t *ttlFlag) Set(s string) error {
	var d time.Duration
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < int64(lease.MinTTL/time.Second) || n > int64(lease.MaxTTL/time.Second) {
			return fmt.Errorf("TTL must be %v to %v, not %d seconds", lease.MinTTL, lease.MaxTTL, n)
		}
		d = time.Duration(n) * time.Second
	} else if d, err = time.ParseDuration(s); err != nil {
		return fmt.Errorf("TTL must be a duration of whole seconds (10s, 1m) or a number of seconds, not %q", s)
	}
	switch {
	case d%time.Second != 0:
		return fmt.Errorf("TTL must be whole seconds, not %v", d)
	case d < lease.MinTTL || d > lease.MaxTTL:
		return fmt.Errorf("TTL must be %v to %v, not %v", lease.MinTTL, lease.MaxTTL, d)
	}
	t.d = d
	return nil
}

// usageOf is a usage error of cmd: err, then how cmd is called.
func usageOf(cmd *cobra.Command, err error) error {
	return usageError{fmt.Errorf("%v\nusage: %s (pando %s --help for more)", err, cmd.UseLine(), cmd.Name())}
}

// nameArgs checks that the first argument is a non-empty NAME and that
// there are at most max arguments (max < 0: any number).
func nameArgs(max int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) == 0:
			return usageOf(cmd, errors.New("NAME is missing"))
		case args[0] == "":
			return usageOf(cmd, errors.New("NAME must not be empty"))
		case max >= 0 && len(args) > max:
			return usageOf(cmd, fmt.Errorf("too many arguments: %q", args[max:]))
		}
		return nil
	}
}

// sessionCtx is ctx, also canceled when s ends.
func sessionCtx(ctx context.Context, s *concurrency.Session) (context.Context, context.CancelFunc) {
	sctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-s.Done():
			cancel()
		case <-sctx.Done():
		}
	}()
	return sctx, cancel
}

// ended says whether s's keep-alives stopped (its lease is gone).
func ended(s *concurrency.Session) bool {
	select {
	case <-s.Done():
		return true
	default:
		return false
	}
}

func electCmd() *cobra.Command {
	var f clientFlags
	var listen bool
	ttl := ttlFlag{defaultSessionTTL}
	cmd := &cobra.Command{
		Use:   "elect NAME [VALUE]",
		Short: "Campaign in election NAME with VALUE and lead until interrupted (--listen: print its leaders)",
		Long: `Leader election, as etcdctl elect has it. Candidates of election NAME write their key,
NAME/<lease ID in hex>, attached to a lease kept alive for --ttl; the oldest candidate leads.

  pando elect job a           waits until it leads, prints its key and value on two lines
                              (job/694d77aa9e1f5c04, then a), leads until SIGINT or SIGTERM,
                              then resigns and exits 0
  pando elect job --listen    prints each leader as it changes (key, then value) until
                              interrupted; exits 0

A candidate whose lease is lost (not renewed for --ttl, or revoked) says so on standard
error and exits with status 1; a process killed outright is replaced once its lease
expires, within --ttl. A missing NAME or VALUE, or a bad --ttl, exits with status 2.`,
		Args: nameArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			switch {
			case listen && len(args) == 2:
				return usageOf(cmd, errors.New("--listen takes no VALUE"))
			case !listen && len(args) != 2:
				return usageOf(cmd, errors.New("VALUE is missing (or --listen to print the leaders)"))
			}
			c, ctx, cancel, err := f.openStream(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			s, err := concurrency.NewSession(c, concurrency.WithTTL(ttl.d))
			if err != nil {
				return err
			}
			out, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
			e := concurrency.NewElection(s, name)
			if listen {
				defer s.Close()
				for kv := range e.Observe(ctx) {
					fmt.Fprintf(out, "%s\n%s\n", kv.Key, kv.Value)
				}
				return nil
			}
			lost := func() error {
				fmt.Fprintf(stderr, "pando: elect %s: session lost (lease %x expired or was revoked): no longer a candidate\n", name, s.Lease())
				return reportedError{concurrency.ErrSessionExpired}
			}
			cctx, ccancel := sessionCtx(ctx, s)
			err = e.Campaign(cctx, args[1])
			ccancel()
			switch {
			case err == nil && ctx.Err() == nil && !ended(s):
			case ctx.Err() != nil:
				// Interrupted (while waiting, or as it won): withdraw.
				return resignAndClose(cmd, &f, name, e, s)
			case ended(s), errors.Is(err, concurrency.ErrSessionExpired):
				return lost()
			default:
				s.Close()
				return err
			}
			fmt.Fprintf(out, "%s\n%s\n", e.Key(), args[1])
			select {
			case <-ctx.Done():
				return resignAndClose(cmd, &f, name, e, s)
			case <-s.Done():
				fmt.Fprintf(stderr, "pando: elect %s: session lost (lease %x expired or was revoked): no longer the leader\n", name, s.Lease())
				return reportedError{concurrency.ErrSessionExpired}
			}
		},
	}
	f.add(cmd, false)
	cmd.Flags().BoolVarP(&listen, "listen", "l", false, "print each leader of the election as it changes, until interrupted")
	cmd.Flags().Var(&ttl, "ttl", "the session's lease TTL, whole seconds (10s, or 10): how soon after this process dies it is replaced")
	cmd.SetFlagErrorFunc(usageOf)
	return cmd
}

// releaseAndClose gives up what the session holds (release: a candidacy,
// a lock or a place in line) and ends the session; when both fail it says
// so, naming when the lease's expiry releases it (verb: pando's verb,
// undo: what failed, freed: what the expiry releases).
func releaseAndClose(cmd *cobra.Command, f *clientFlags, verb, name, undo, freed string, release func(context.Context) error, s *concurrency.Session) error {
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	rerr := release(ctx)
	if cerr := s.Close(); rerr != nil && cerr != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "pando: %s %s: could not %s (%v): %s when lease %x expires, within %v\n", verb, name, undo, rerr, freed, s.Lease(), s.TTL())
		return reportedError{rerr}
	}
	return nil
}

// resignAndClose withdraws the candidate and ends its session.
func resignAndClose(cmd *cobra.Command, f *clientFlags, name string, e *concurrency.Election, s *concurrency.Session) error {
	return releaseAndClose(cmd, f, "elect", name, "resign", "the candidacy ends", e.Resign, s)
}

func lockCmd() *cobra.Command {
	var f clientFlags
	ttl := ttlFlag{defaultSessionTTL}
	cmd := &cobra.Command{
		Use:   "lock NAME [-- COMMAND [ARGS...]]",
		Short: "Acquire the lock NAME and run a command holding it (without one: hold it until interrupted)",
		Long: `A distributed lock, as etcdctl lock has it. Who locks NAME writes its key,
NAME/<lease ID in hex>, attached to a lease kept alive for --ttl, and holds the lock when
its key is the oldest: the lock is granted in order of arrival.

  pando lock L -- COMMAND ARGS...   waits for the lock, runs COMMAND holding it (standard
                                    input, output and error passed through; PANDO_LOCK_KEY
                                    set to the lock's key), releases it and exits with
                                    COMMAND's status (128+N when a signal N killed it;
                                    127 when COMMAND is not found)
  pando lock L                      waits for the lock, prints its key (L/694d77aa9e1f5c04)
                                    and holds it until SIGINT or SIGTERM; unlocks, exits 0

Put pando's own flags before --. While COMMAND runs, SIGINT and SIGTERM are passed on to it
and the lock is released when it exits. If the lock is lost meanwhile (the lease not
renewed for --ttl, or revoked), COMMAND is not stopped: pando warns on standard error and
exits with status 1 once it ends. Interrupted before the lock is acquired, pando gives up
its place in line and exits 0 (with COMMAND: 1, COMMAND not run). A missing NAME or a bad
--ttl exits with status 2.`,
		Args: nameArgs(-1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, command := args[0], args[1:]
			// Signals to pass on to COMMAND (registered before the lock
			// is taken, so that none is missed while it starts).
			sigs := make(chan os.Signal, 4)
			if len(command) > 0 {
				signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
				defer signal.Stop(sigs)
			}
			c, ctx, cancel, err := f.openStream(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			s, err := concurrency.NewSession(c, concurrency.WithTTL(ttl.d))
			if err != nil {
				return err
			}
			stderr := cmd.ErrOrStderr()
			m := concurrency.NewMutex(s, name)
			lost := func() error {
				fmt.Fprintf(stderr, "pando: lock %s: session lost (lease %x expired or was revoked): the lock is no longer held\n", name, s.Lease())
				return reportedError{concurrency.ErrSessionExpired}
			}
			interrupted := func() error {
				// Give up the lock or the place in line.
				if uerr := unlockAndClose(cmd, &f, name, m, s); uerr != nil {
					return uerr
				}
				if len(command) > 0 {
					fmt.Fprintf(stderr, "pando: lock %s: interrupted before the lock was acquired: %s not run\n", name, command[0])
					return reportedError{context.Canceled}
				}
				return nil
			}
			lctx, lcancel := sessionCtx(ctx, s)
			err = m.Lock(lctx)
			lcancel()
			switch {
			case err == nil && ctx.Err() == nil && !ended(s):
			case ctx.Err() != nil:
				return interrupted()
			case ended(s), errors.Is(err, concurrency.ErrSessionExpired):
				return lost()
			default:
				s.Close()
				return err
			}
			if len(command) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), m.Key())
				select {
				case <-ctx.Done():
					return unlockAndClose(cmd, &f, name, m, s)
				case <-s.Done():
					return lost()
				}
			}

			if len(sigs) > 0 {
				return interrupted() // a signal ctx has not seen yet
			}
			run := exec.Command(command[0], command[1:]...)
			run.Env = append(os.Environ(), "PANDO_LOCK_KEY="+m.Key())
			run.Stdin, run.Stdout, run.Stderr = cmd.InOrStdin(), cmd.OutOrStdout(), stderr
			if err := run.Start(); err != nil {
				unlockAndClose(cmd, &f, name, m, s)
				fmt.Fprintf(stderr, "pando: lock %s: %v\n", name, err)
				if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
					return reportedError{exitStatus{127}}
				}
				return reportedError{exitStatus{126}}
			}
			waited := make(chan error, 1)
			go func() { waited <- run.Wait() }()
			sessionDone := s.Done()
			wasLost := false
			var werr error
		wait:
			for {
				select {
				case sig := <-sigs:
					_ = run.Process.Signal(sig)
				case <-sessionDone:
					sessionDone, wasLost = nil, true
					fmt.Fprintf(stderr, "pando: lock %s: warning: session lost (lease %x expired or was revoked): the lock is no longer held while %s runs\n", name, s.Lease(), command[0])
				case werr = <-waited:
					break wait
				}
			}
			code := 0
			var ee *exec.ExitError
			switch {
			case errors.As(werr, &ee):
				code = ee.ExitCode()
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					code = 128 + int(ws.Signal())
				}
			case werr != nil:
				fmt.Fprintf(stderr, "pando: lock %s: %v\n", name, werr)
				code = 1
			}
			if wasLost || ended(s) {
				if !wasLost {
					fmt.Fprintf(stderr, "pando: lock %s: warning: session lost (lease %x expired or was revoked): the lock was not held until %s ended\n", name, s.Lease(), command[0])
				}
				return reportedError{exitStatus{1}}
			}
			// The command's status, whether or not the release succeeds (a
			// lock not released goes with its lease, within --ttl).
			unlockAndClose(cmd, &f, name, m, s)
			if code != 0 {
				return reportedError{exitStatus{code}}
			}
			return nil
		},
	}
	f.add(cmd, false)
	cmd.Flags().Var(&ttl, "ttl", "the session's lease TTL, whole seconds (10s, or 10): how soon after this process dies the lock is released")
	cmd.SetFlagErrorFunc(usageOf)
	return cmd
}

// unlockAndClose releases the lock (or the place in line) and ends the
// session.
func unlockAndClose(cmd *cobra.Command, f *clientFlags, name string, m *concurrency.Mutex, s *concurrency.Session) error {
	return releaseAndClose(cmd, f, "lock", name, "unlock", "the lock is released", m.Unlock, s)
}
