package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"github.com/pando/pando/internal/httpapi"
)

func u64(n uint64) *uint64 { return &n }
func str(s string) *string { return &s }
func lid(n int64) *httpapi.LeaseID {
	l := httpapi.LeaseID(n)
	return &l
}

func TestParseTxn(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     httpapi.TxnRequest
		err      string // a substring of the error, "" for none
	}{
		{name: "etcdctl's example", in: "mod(\"key1\") > \"0\"\n\nput key1 \"overwrote-key1\"\n\nput key1 \"created-key1\"\nput key2 \"some extra key\"\n",
			want: httpapi.TxnRequest{
				Compare: []httpapi.TxnCompare{{Key: "key1", Target: "mod", Result: ">", ModRevision: u64(0)}},
				Success: []httpapi.TxnOp{{Put: &httpapi.TxnPut{Key: "key1", Value: "overwrote-key1"}}},
				Failure: []httpapi.TxnOp{{Put: &httpapi.TxnPut{Key: "key1", Value: "created-key1"}}, {Put: &httpapi.TxnPut{Key: "key2", Value: "some extra key"}}},
			}},
		{name: "every target and operator", in: "value(\"k\") = \"a b\"\nversion(\"k\") != 3\ncreate(\"k\") < 10\nm(k) > 2\nval('k') = ''\n",
			want: httpapi.TxnRequest{Compare: []httpapi.TxnCompare{
				{Key: "k", Target: "value", Result: "=", Value: str("a b")},
				{Key: "k", Target: "version", Result: "!=", Version: u64(3)},
				{Key: "k", Target: "create", Result: "<", CreateRevision: u64(10)},
				{Key: "k", Target: "mod", Result: ">", ModRevision: u64(2)},
				{Key: "k", Target: "value", Result: "=", Value: str("")},
			}}},
		{name: "every operation", in: "\n# no compares\ndel k\ndel a b\ndel --prefix p/\nget k\nget a b\nget --prefix p/ --limit 5\nget --limit=2 a\n\nput \"k\\x00\" 'it''s'\n",
			want: httpapi.TxnRequest{
				Success: []httpapi.TxnOp{
					{Delete: &httpapi.TxnDelete{Key: "k"}},
					{Delete: &httpapi.TxnDelete{Key: "a", RangeEnd: "b"}},
					{Delete: &httpapi.TxnDelete{Key: "p/", Prefix: true}},
					{Get: &httpapi.TxnGet{Key: "k"}},
					{Get: &httpapi.TxnGet{Key: "a", RangeEnd: "b"}},
					{Get: &httpapi.TxnGet{Key: "p/", Prefix: true, Limit: 5}},
					{Get: &httpapi.TxnGet{Key: "a", Limit: 2}},
				},
				Failure: []httpapi.TxnOp{{Put: &httpapi.TxnPut{Key: "k\x00", Value: "its"}}},
			}},
		{name: "leases: a compare and puts", in: "lease(\"k\") = \"4611686018427387904\"\nlease(k) != 0\n\nput k v --lease=7\nput --lease 4611686018427387904 j w\nput -- k --lease=7\n",
			want: httpapi.TxnRequest{
				Compare: []httpapi.TxnCompare{{Key: "k", Target: "lease", Result: "=", Lease: lid(1 << 62)}, {Key: "k", Target: "lease", Result: "!=", Lease: lid(0)}},
				Success: []httpapi.TxnOp{{Put: &httpapi.TxnPut{Key: "k", Value: "v", Lease: 7}}, {Put: &httpapi.TxnPut{Key: "j", Value: "w", Lease: 1 << 62}}, {Put: &httpapi.TxnPut{Key: "k", Value: "--lease=7"}}},
			}},
		{name: "values that look like flags", in: "\nput -- k --prefix\nget -- --limit\n",
			want: httpapi.TxnRequest{Success: []httpapi.TxnOp{{Put: &httpapi.TxnPut{Key: "k", Value: "--prefix"}}, {Get: &httpapi.TxnGet{Key: "--limit"}}}}},
		{name: "trailing blank lines", in: "version(\"k\") = 0\n\nput k v\n\n\n\n",
			want: httpapi.TxnRequest{
				Compare: []httpapi.TxnCompare{{Key: "k", Target: "version", Result: "=", Version: u64(0)}},
				Success: []httpapi.TxnOp{{Put: &httpapi.TxnPut{Key: "k", Value: "v"}}},
			}},
		{name: "empty", in: ""},

		{name: "no parenthesis", in: "version k = 0\n", err: "line 1: malformed compare"},
		{name: "unknown target", in: "owner(\"k\") = 0\n", err: `line 1: unknown compare target "owner"`},
		{name: "a lease ID that is not a number", in: "lease(\"k\") = \"x\"\n", err: `a compare on lease takes a lease ID`},
		{name: "put --lease without an ID", in: "\nput k v --lease\n", err: "put: --lease needs a lease ID"},
		{name: "put --lease not a number", in: "\nput k v --lease=0x1f\n", err: `put: --lease must be a lease ID (a positive decimal number), not "0x1f"`},
		{name: "--lease on a get", in: "\nget k --lease=3\n", err: "get: unknown flag --lease=3"},
		{name: "unknown operator", in: "version(\"k\") >= 0\n", err: `line 1: unknown result ">="`},
		{name: "no operator", in: "version(\"k\") 0\n", err: "no operator"},
		{name: "no operand", in: "version(\"k\") =\n", err: "no operand"},
		{name: "a value unquoted with spaces", in: "value(\"k\") = a b\n", err: `"b" after the operand`},
		{name: "not a number", in: "mod(\"k\") = abc\n", err: `takes a number, not "abc"`},
		{name: "unterminated key", in: "version(\"k) = 0\n", err: "unterminated"},
		{name: "no closing parenthesis", in: "version(\"k\" = 0\n", err: "no ) after the key"},
		{name: "missing key", in: "version(\"\") = 0\n", err: "missing key"},
		{name: "unknown operation", in: "\nfrob k\n", err: `line 2: unknown operation "frob"`},
		{name: "put without value", in: "\n\nput k\n", err: "line 3: put takes KEY VALUE (1 arguments given"},
		{name: "put with spaces unquoted", in: "\nput k a b\n", err: "put takes KEY VALUE (3"},
		{name: "prefix and end", in: "\ndel --prefix a b\n", err: "--prefix excludes END"},
		{name: "unknown flag", in: "\nget --rev 3 k\n", err: "unknown flag --rev"},
		{name: "bad limit", in: "\nget k --limit x\n", err: `--limit must be a number, not "x"`},
		{name: "unterminated quote", in: "\nput k \"v\n", err: "line 2: unterminated"},
		{name: "a fourth block", in: "\nput k v\n\nget k\n\nget j\n", err: `line 6: "get j" after the failure operations`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseTxn(strings.NewReader(tc.in), nil)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("parseTxn(%q) = %v, want an error with %q", tc.in, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseTxn(%q): %v", tc.in, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				g, _ := json.Marshal(got)
				w, _ := json.Marshal(tc.want)
				t.Fatalf("parseTxn(%q) =\n%s\nwant\n%s", tc.in, g, w)
			}
			if _, err := got.Proto(); err != nil {
				t.Fatalf("the parsed request does not convert: %v", err)
			}
		})
	}

	// Interactive (-i): a prompt as each block begins, and the failure
	// block's blank line ends the input (what follows is not read).
	var prompts []string
	got, err := parseTxn(strings.NewReader("version(\"k\") = 0\n\nput k v\n\nget k\n\nnot read\n"), func(b int) { prompts = append(prompts, txnBlocks[b]) })
	if err != nil || len(got.Compare) != 1 || len(got.Success) != 1 || len(got.Failure) != 1 || fmt.Sprint(prompts) != fmt.Sprint(txnBlocks[:]) {
		t.Fatalf("interactive: %+v %v, prompts %q", got, err, prompts)
	}

	// The flags take the same lines, one a flag; an error names the flag.
	got, err = parseTxnFlags([]string{`version("k") = 0`}, []string{"put k v", "get k"}, []string{"get --prefix k"})
	want := httpapi.TxnRequest{
		Compare: []httpapi.TxnCompare{{Key: "k", Target: "version", Result: "=", Version: u64(0)}},
		Success: []httpapi.TxnOp{{Put: &httpapi.TxnPut{Key: "k", Value: "v"}}, {Get: &httpapi.TxnGet{Key: "k"}}},
		Failure: []httpapi.TxnOp{{Get: &httpapi.TxnGet{Key: "k", Prefix: true}}},
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("parseTxnFlags = %+v, %v", got, err)
	}
	if _, err := parseTxnFlags(nil, nil, []string{"put k"}); err == nil || !strings.Contains(err.Error(), `--else "put k": put takes KEY VALUE`) {
		t.Fatalf("a bad --else: %v", err)
	}
}

// pando txn against a real process: the stdin form and the flags, both
// branches, --json, a parse error (exit status 2) and a transaction the
// cluster refuses (across ranges: exit status 1).
func TestCLITxn(t *testing.T) {
	pc := startProcs(t, 1)
	ep := "--endpoints=" + pc.addrs[0]
	run := func(stdin string, args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(pc.bin, append(args, ep)...)
		cmd.Stdin = strings.NewReader(stdin)
		return exitOf(t, cmd)
	}
	pc.leader()
	for _, tc := range []struct {
		stdin string
		args  []string
		code  int
		out   string // the whole output
	}{
		// Created once: the second time the compare fails and the
		// failure branch reads what the first wrote.
		{"version(\"lock\") = 0\n\nput lock \"held by a\"\nput owner a\n\nget lock\n", []string{"txn"}, 0, "SUCCESS\n\nOK\n\nOK\n"},
		{"version(\"lock\") = 0\n\nput lock \"held by b\"\n\nget lock\nget --prefix own\n", []string{"txn"}, 0, "FAILURE\n\nlock\nheld by a\n\nowner\na\n"},
		{"", []string{"txn", "--compare", `value("lock") = "held by a"`, "--then", "del lock", "--then", "get lock", "--else", "get lock"}, 0, "SUCCESS\n\n1\n\n"},
		{"", []string{"txn", "--compare", `value("lock") = "held by a"`, "--then", "put lock x", "--else", "put lock free"}, 0, "FAILURE\n\nOK\n"},
		{"", []string{"txn", "--compare", `mod("owner") > 0`, "--then", "del --prefix o", "--then", "get o z"}, 0, "SUCCESS\n\n1\n\n"},
		{"", []string{"get", "lock"}, 0, "free\n"},
		// Parse errors: exit status 2, the line named; nothing sent.
		{"version(\"lock\") = 0\n\nput lock\n", []string{"txn"}, 2, "line 3: put takes KEY VALUE"},
		{"", []string{"txn", "--compare", `version("lock") >= 0`}, 2, `--compare "version(\"lock\") >= 0": unknown result ">="`},
		{"", []string{"txn", "hello"}, 2, "unknown command"},
	} {
		out, code := run(tc.stdin, tc.args...)
		if code != tc.code || (tc.code == 0 && out != tc.out) || (tc.code != 0 && !strings.Contains(out, tc.out)) {
			t.Errorf("pando %s <<< %q: exit %d %q, want exit %d with %q", strings.Join(tc.args, " "), tc.stdin, code, out, tc.code, tc.out)
		}
	}

	// --json is POST /v1/txn's answer.
	out, code := run("", "txn", "--then", "put j 1", "--then", "get j", "--json")
	var ans httpapi.TxnAnswer
	if err := json.Unmarshal([]byte(out), &ans); code != 0 || err != nil || !ans.Succeeded || len(ans.Responses) != 2 || ans.Responses[0].Put == nil ||
		ans.Responses[0].Put.Revision != ans.Revision || ans.Responses[1].Get == nil || len(ans.Responses[1].Get.KVs) != 1 ||
		string(ans.Responses[1].Get.KVs[0].Value) != "1" || ans.Responses[1].Get.KVs[0].ModRevision != ans.Revision {
		t.Fatalf("pando txn --json: exit %d %s (%v)", code, out, err)
	}

	// Across ranges: refused by the cluster (exit status 1), nothing written.
	if out, code := run("", "split", "m"); code != 0 {
		t.Fatalf("pando split m: exit %d %s", code, out)
	}
	out, code = run("", "txn", "--then", "put a 1", "--then", "put z 1")
	if code != 1 || !strings.Contains(out, "must lie in one range") {
		t.Fatalf("a transaction across ranges: exit %d %q, want exit 1 saying its keys must lie in one range", code, out)
	}
	if out, code := run("", "get", "a"); code != 3 {
		t.Fatalf("a refused transaction wrote a: exit %d %s", code, fmt.Sprint(out))
	}
}
