package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/client"
	"github.com/pando/pando/internal/httpapi"
	"github.com/pando/pando/kv"
)

const txnLong = `Run a transaction within one range (etcdctl's txn): if every compare holds, the
success operations run, else the failure ones; all or nothing, at one revision.

Without flags it reads three blocks from standard input, separated by blank lines:
the compares, the success operations, the failure operations (-i prompts for each,
as etcdctl txn -i does, and ends at the failure block's blank line).

  mod("acct/a") = 2201
  value("lock") = "free"

  put acct/a 90
  put lock "held by me"

  get acct/a

A compare is TARGET("KEY") OP OPERAND: TARGET version, create, mod, value or
lease (ver, c, m, val), OP =, !=, > or <, OPERAND a number or (value) a string;
lease("KEY") = "ID" compares the ID of the lease KEY is attached to (0: none).
An operation is put KEY VALUE [--lease=ID], del KEY [END], del --prefix KEY,
get KEY [END], get --prefix KEY (get takes --limit N). Quote with double quotes (Go escapes:
"a b", "\x00") or single quotes (as is); lines starting with # are comments.
The flags --compare, --then and --else (each repeatable) take the same lines.

It prints SUCCESS or FAILURE and each operation's result (OK for a put, the count
for a delete, key and value lines for a get); --json prints POST /v1/txn's answer.
A line that does not parse exits with status 2; a transaction the cluster refuses
(its keys in more than one range, too many operations) with status 1.`

func txnCmd() *cobra.Command {
	var f clientFlags
	var cmps, thens, elses []string
	var interactive bool
	cmd := &cobra.Command{
		Use:   "txn [-i] | [--compare C]... [--then OP]... [--else OP]...",
		Short: "Run a transaction within one range: compares, then the success or the failure operations",
		Long:  txnLong,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var req httpapi.TxnRequest
			var err error
			if len(cmps)+len(thens)+len(elses) > 0 {
				req, err = parseTxnFlags(cmps, thens, elses)
			} else {
				var prompt func(block int)
				if interactive {
					prompt = func(block int) { fmt.Fprintf(cmd.ErrOrStderr(), "%s:\n", txnBlocks[block]) }
				}
				req, err = parseTxn(cmd.InOrStdin(), prompt)
			}
			if err != nil {
				return usageError{err}
			}
			preq, err := req.Proto() // each line is checked already
			if err != nil {
				return usageError{err}
			}
			if len(preq.Compare)+len(preq.Success)+len(preq.Failure) == 0 {
				return usageError{errors.New("txn: an empty transaction (no compare and no operation)")}
			}
			c, ctx, cancel, err := f.open()
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			txn := c.Txn(ctx)
			for _, pc := range preq.Compare {
				txn.If(clientCmp(pc))
			}
			for _, o := range preq.Success {
				txn.Then(clientOp(o))
			}
			for _, o := range preq.Failure {
				txn.Else(clientOp(o))
			}
			resp, err := txn.Commit()
			if err != nil {
				return err
			}
			branch := preq.Failure
			if resp.Succeeded {
				branch = preq.Success
			}
			ans := txnAnswer(resp, branch)
			if f.json {
				return printJSON(cmd.OutOrStdout(), ans)
			}
			return printTxn(cmd.OutOrStdout(), ans)
		},
	}
	f.add(cmd, true)
	cmd.Flags().StringArrayVar(&cmps, "compare", nil, `a compare, like 'version("k") = 0' (repeatable; all must hold)`)
	cmd.Flags().StringArrayVar(&thens, "then", nil, `an operation run when the compares hold, like 'put k v' (repeatable)`)
	cmd.Flags().StringArrayVar(&elses, "else", nil, `an operation run otherwise, like 'get k' (repeatable)`)
	cmd.Flags().BoolVarP(&interactive, "interactive", "i", false, "prompt for each block on standard error; the failure block's blank line ends the input")
	return cmd
}

var txnBlocks = [3]string{"compares", "success requests (get, put, del)", "failure requests (get, put, del)"}

// parseTxn reads a transaction in etcdctl's form: compares, success
// operations and failure operations, three blocks separated by blank
// lines. prompt, when set (interactive), is called as each block begins,
// and the failure block's blank line ends the input (else the end of
// input does, and a line after the third block is an error). An error
// names the line.
func parseTxn(r io.Reader, prompt func(block int)) (httpapi.TxnRequest, error) {
	var req httpapi.TxnRequest
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, kv.DefaultMaxRequestSize+1)
	block := 0
	if prompt != nil {
		prompt(block)
	}
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" && prompt != nil && block == len(txnBlocks)-1:
			return req, nil // interactive: the failure block's blank line ends it
		case line == "":
			if block++; prompt != nil {
				prompt(block)
			}
			continue
		case strings.HasPrefix(line, "#"):
			continue
		case block >= len(txnBlocks):
			return req, fmt.Errorf("txn: line %d: %q after the failure operations (the input is three blocks: compares, success and failure operations, separated by blank lines)", n, line)
		}
		if err := addLine(&req, block, line); err != nil {
			return req, fmt.Errorf("txn: line %d: %w", n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return req, fmt.Errorf("txn: reading the input: %w", err)
	}
	return req, nil
}

// parseTxnFlags reads a transaction from --compare, --then and --else.
func parseTxnFlags(cmps, thens, elses []string) (httpapi.TxnRequest, error) {
	var req httpapi.TxnRequest
	for block, b := range []struct {
		flag  string
		lines []string
	}{{"--compare", cmps}, {"--then", thens}, {"--else", elses}} {
		for _, line := range b.lines {
			if err := addLine(&req, block, strings.TrimSpace(line)); err != nil {
				return req, fmt.Errorf("txn: %s %q: %w", b.flag, line, err)
			}
		}
	}
	return req, nil
}

// addLine parses line as a compare (block 0) or an operation of the
// success (1) or failure (2) branch, checks it as the server would, and
// adds it to req.
func addLine(req *httpapi.TxnRequest, block int, line string) error {
	if block == 0 {
		c, err := parseCompare(line)
		if err != nil {
			return err
		}
		if _, err := c.Proto(); err != nil {
			return err
		}
		req.Compare = append(req.Compare, c)
		return nil
	}
	o, err := parseTxnOp(line)
	if err != nil {
		return err
	}
	if _, err := o.Proto(); err != nil {
		return err
	}
	if block == 1 {
		req.Success = append(req.Success, o)
	} else {
		req.Failure = append(req.Failure, o)
	}
	return nil
}

var compareTargets = map[string]string{
	"version": "version", "ver": "version", "create": "create", "c": "create",
	"mod": "mod", "m": "mod", "value": "value", "val": "value", "lease": "lease",
}

// parseCompare reads TARGET("KEY") OP OPERAND, as etcdctl writes compares
// (the key and the operand may also be bare words; numbers need no quotes).
func parseCompare(line string) (httpapi.TxnCompare, error) {
	var c httpapi.TxnCompare
	open := strings.IndexByte(line, '(')
	if open < 0 {
		return c, fmt.Errorf("malformed compare %q: want TARGET(\"KEY\") OP OPERAND, like version(\"k\") = 0", line)
	}
	name := strings.TrimSpace(line[:open])
	target, ok := compareTargets[strings.ToLower(name)]
	if !ok {
		return c, fmt.Errorf("unknown compare target %q (version, create, mod, value or lease)", name)
	}
	rest := strings.TrimLeft(line[open+1:], " \t")
	key, rest, err := word(rest, ")")
	if err != nil {
		return c, fmt.Errorf("compare key: %w", err)
	}
	rest = strings.TrimLeft(rest, " \t")
	if !strings.HasPrefix(rest, ")") {
		return c, fmt.Errorf("malformed compare %q: no ) after the key", line)
	}
	rest = strings.TrimLeft(rest[1:], " \t")
	op := rest[:len(rest)-len(strings.TrimLeft(rest, "=!<>"))]
	if op == "" {
		return c, fmt.Errorf("malformed compare %q: no operator (=, !=, > or <) after %s(%q)", line, name, key)
	}
	rest = strings.TrimSpace(rest[len(op):])
	if rest == "" {
		return c, fmt.Errorf("malformed compare %q: no operand after %s", line, op)
	}
	operand, rest, err := word(rest, "")
	if err != nil {
		return c, fmt.Errorf("compare operand: %w", err)
	}
	if rest = strings.TrimSpace(rest); rest != "" {
		return c, fmt.Errorf("malformed compare %q: %q after the operand (quote a value with spaces)", line, rest)
	}
	c.Key, c.Target, c.Result = key, target, op
	if target == "value" {
		c.Value = &operand
		return c, nil
	}
	if target == "lease" {
		id, err := strconv.ParseInt(operand, 10, 64)
		if err != nil || id < 0 {
			return c, fmt.Errorf("a compare on lease takes a lease ID (a decimal number, 0: none), not %q", operand)
		}
		l := httpapi.LeaseID(id)
		c.Lease = &l
		return c, nil
	}
	num, err := strconv.ParseUint(operand, 10, 64)
	if err != nil {
		return c, fmt.Errorf("a compare on %s takes a number, not %q", target, operand)
	}
	switch target {
	case "version":
		c.Version = &num
	case "create":
		c.CreateRevision = &num
	default:
		c.ModRevision = &num
	}
	return c, nil
}

// word reads one word at the start of s: a double-quoted Go string, a
// single-quoted one (as is), or bare characters up to a space or one of
// stops. It returns the word and what follows it.
func word(s, stops string) (string, string, error) {
	switch {
	case strings.HasPrefix(s, `"`):
		q, err := strconv.QuotedPrefix(s)
		if err != nil {
			return "", s, fmt.Errorf("unterminated or malformed quoted string %s", s)
		}
		w, _ := strconv.Unquote(q)
		return w, s[len(q):], nil
	case strings.HasPrefix(s, "'"):
		end := strings.IndexByte(s[1:], '\'')
		if end < 0 {
			return "", s, fmt.Errorf("unterminated quoted string %s", s)
		}
		return s[1 : end+1], s[end+2:], nil
	}
	end := strings.IndexAny(s, " \t"+stops)
	if end < 0 {
		end = len(s)
	}
	return s[:end], s[end:], nil
}

// splitWords splits an operation's line into words, as a shell would for
// quotes: "a b" is one word (Go escapes), 'a b' too (as is).
func splitWords(line string) ([]string, error) {
	var words []string
	for s := strings.TrimLeft(line, " \t"); s != ""; s = strings.TrimLeft(s, " \t") {
		var w strings.Builder
		for s != "" && s[0] != ' ' && s[0] != '\t' {
			part, rest, err := word(s, `"'`)
			if err != nil {
				return nil, err
			}
			w.WriteString(part)
			s = rest
		}
		words = append(words, w.String())
	}
	return words, nil
}

// parseTxnOp reads put KEY VALUE (and put's --lease ID), del KEY [END],
// del --prefix KEY, get KEY [END], get --prefix KEY (and get's --limit N);
// after --, words are keys and values even when they look like flags.
func parseTxnOp(line string) (httpapi.TxnOp, error) {
	var o httpapi.TxnOp
	words, err := splitWords(line)
	if err != nil {
		return o, err
	}
	if len(words) == 0 {
		return o, errors.New("an empty operation")
	}
	verb := words[0]
	var args []string
	var prefix, flagsDone bool
	var limit uint64
	var leaseID int64
	for i := 1; i < len(words); i++ {
		w := words[i]
		switch {
		case flagsDone:
			args = append(args, w)
		case w == "--":
			flagsDone = true // what follows is keys and values, even --x
		case w == "--prefix" && verb != "put":
			prefix = true
		case (w == "--limit" || strings.HasPrefix(w, "--limit=")) && verb == "get":
			v, ok := strings.CutPrefix(w, "--limit=")
			if !ok {
				if i+1 == len(words) {
					return o, errors.New("get: --limit needs a number")
				}
				i++
				v = words[i]
			}
			if limit, err = strconv.ParseUint(v, 10, 32); err != nil {
				return o, fmt.Errorf("get: --limit must be a number, not %q", v)
			}
		case (w == "--lease" || strings.HasPrefix(w, "--lease=")) && verb == "put":
			v, ok := strings.CutPrefix(w, "--lease=")
			if !ok {
				if i+1 == len(words) {
					return o, errors.New("put: --lease needs a lease ID")
				}
				i++
				v = words[i]
			}
			if leaseID, err = strconv.ParseInt(v, 10, 64); err != nil || leaseID <= 0 {
				return o, fmt.Errorf("put: --lease must be a lease ID (a positive decimal number), not %q", v)
			}
		case strings.HasPrefix(w, "--") && len(w) > 2:
			return o, fmt.Errorf("%s: unknown flag %s", verb, w)
		default:
			args = append(args, w)
		}
	}
	switch verb {
	case "put":
		if len(args) != 2 {
			return o, fmt.Errorf("put takes KEY VALUE (%d arguments given; quote a value with spaces)", len(args))
		}
		o.Put = &httpapi.TxnPut{Key: args[0], Value: args[1], Lease: httpapi.LeaseID(leaseID)}
	case "del", "delete", "get":
		switch {
		case len(args) == 0 || len(args) > 2:
			return o, fmt.Errorf("%s takes KEY [END] or --prefix KEY (%d arguments given)", verb, len(args))
		case prefix && len(args) == 2:
			return o, fmt.Errorf("%s: --prefix excludes END", verb)
		}
		var end string
		if len(args) == 2 {
			end = args[1]
		}
		if verb == "get" {
			o.Get = &httpapi.TxnGet{Key: args[0], RangeEnd: end, Prefix: prefix, Limit: uint32(limit)}
		} else {
			o.Delete = &httpapi.TxnDelete{Key: args[0], RangeEnd: end, Prefix: prefix}
		}
	default:
		return o, fmt.Errorf("unknown operation %q (put, del or get)", verb)
	}
	return o, nil
}

// clientCmp is the Go client's form of a checked compare.
func clientCmp(c *pandopb.Compare) client.Cmp {
	key := string(c.Key)
	var t client.CmpTarget
	switch c.Target {
	case pandopb.Compare_VERSION:
		t = client.Version(key)
	case pandopb.Compare_CREATE:
		t = client.CreateRevision(key)
	case pandopb.Compare_MOD:
		t = client.ModRevision(key)
	case pandopb.Compare_LEASE:
		t = client.LeaseOf(key)
	default:
		v := string(c.Value)
		switch c.Result {
		case pandopb.Compare_NOT_EQUAL:
			return client.Value(key).IsNot(v)
		case pandopb.Compare_GREATER:
			return client.Value(key).ValueGreater(v)
		case pandopb.Compare_LESS:
			return client.Value(key).ValueLess(v)
		default:
			return client.Value(key).Is(v)
		}
	}
	switch c.Result {
	case pandopb.Compare_NOT_EQUAL:
		return t.NotEqual(c.Number)
	case pandopb.Compare_GREATER:
		return t.Greater(c.Number)
	case pandopb.Compare_LESS:
		return t.Less(c.Number)
	default:
		return t.Equal(c.Number)
	}
}

// clientOp is the Go client's form of a checked operation.
func clientOp(o *pandopb.TxnRequestOp) client.Op {
	switch x := o.Op.(type) {
	case *pandopb.TxnRequestOp_Put:
		if x.Put.Lease != 0 {
			return client.OpPut(string(x.Put.Key), string(x.Put.Value), client.WithLease(x.Put.Lease))
		}
		return client.OpPut(string(x.Put.Key), string(x.Put.Value))
	case *pandopb.TxnRequestOp_Delete:
		if len(x.Delete.RangeEnd) == 0 {
			return client.OpDelete(string(x.Delete.Key))
		}
		return client.OpDeleteRange(string(x.Delete.Key), string(x.Delete.RangeEnd))
	default:
		r := o.GetRange()
		if len(r.RangeEnd) == 0 && r.Limit == 0 {
			return client.OpGet(string(r.Key))
		}
		return client.OpScan(string(r.Key), string(r.RangeEnd), r.Limit)
	}
}

// txnAnswer is the client's answer in POST /v1/txn's JSON form; branch is
// the operations that ran (the results come in their order).
func txnAnswer(resp *client.TxnResponse, branch []*pandopb.TxnRequestOp) httpapi.TxnAnswer {
	out := httpapi.TxnAnswer{Succeeded: resp.Succeeded, Revision: resp.Revision, Responses: make([]httpapi.TxnOpAnswer, 0, len(resp.Results))}
	for i, r := range resp.Results {
		var a httpapi.TxnOpAnswer
		var op *pandopb.TxnRequestOp
		if i < len(branch) {
			op = branch[i]
		}
		switch op.GetOp().(type) {
		case *pandopb.TxnRequestOp_Put:
			a.Put = &httpapi.TxnPutAnswer{Revision: resp.Revision, Version: r.Version}
		case *pandopb.TxnRequestOp_Delete:
			a.Delete = &httpapi.TxnDeleteAnswer{Deleted: r.Deleted}
		default:
			g := &httpapi.TxnGetAnswer{KVs: make([]httpapi.ScanItem, 0, len(r.KVs)), More: r.More}
			for _, it := range r.KVs {
				g.KVs = append(g.KVs, httpapi.ScanItem{Key: it.Key, Value: it.Value, Version: it.Version, CreateRevision: it.CreateRevision, ModRevision: it.ModRevision})
			}
			a.Get = g
		}
		out.Responses = append(out.Responses, a)
	}
	return out
}

// printTxn prints an answer as etcdctl does: SUCCESS or FAILURE, then each
// result after a blank line (OK, a delete's count, a get's keys and values
// on lines of their own).
func printTxn(w io.Writer, ans httpapi.TxnAnswer) error {
	bw := bufio.NewWriter(w)
	if ans.Succeeded {
		fmt.Fprintln(bw, "SUCCESS")
	} else {
		fmt.Fprintln(bw, "FAILURE")
	}
	for _, r := range ans.Responses {
		fmt.Fprintln(bw)
		switch {
		case r.Put != nil:
			fmt.Fprintln(bw, "OK")
		case r.Delete != nil:
			fmt.Fprintln(bw, r.Delete.Deleted)
		case r.Get != nil:
			for _, it := range r.Get.KVs {
				bw.Write(it.Key)
				fmt.Fprintln(bw)
				bw.Write(it.Value)
				fmt.Fprintln(bw)
			}
		}
	}
	return bw.Flush()
}
