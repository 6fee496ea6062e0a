package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// A real process: `pando watch --prefix` sees puts made over HTTP (as
// curl makes them) in revision order, `pando history` lists a key's
// versions, `pando get --revision` reads an old one, and after `pando
// compact` that read is refused.
func TestCLIWatchHistoryAndCompact(t *testing.T) {
	pc := startProcs(t, 1)
	ep := "--endpoints=" + pc.addrs[0]
	pc.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	watch := exec.CommandContext(ctx, pc.bin, "watch", "--prefix", "svc/", "--count", "3", ep)
	stdout, err := watch.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	watch.Stderr = &stderr
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	hc := &http.Client{Timeout: 5 * time.Second}
	put := func(key, value string) {
		t.Helper()
		req, _ := http.NewRequest("PUT", "http://"+pc.addrs[0]+"/v1/kv/"+key, strings.NewReader(value))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("PUT %s: %s", key, resp.Status)
		}
	}
	// The watch starts "from now": write until its first change shows,
	// then two more.
	var got []string
	deadline := time.After(20 * time.Second)
	for n := 0; len(got) == 0; n++ {
		put("svc/a", fmt.Sprint("one-", n))
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("watch ended: %s", stderr.String())
			}
			got = append(got, l)
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			t.Fatalf("the watch printed nothing: %s", stderr.String())
		}
	}
	put("other", "not watched")
	put("svc/b", "two")
	put("svc/a", "three")
	for len(got) < 3 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("watch ended after %q: %s", got, stderr.String())
			}
			got = append(got, l)
		case <-deadline:
			t.Fatalf("the watch printed %q", got)
		}
	}
	if err := watch.Wait(); err != nil {
		t.Fatalf("watch --count 3: %v %s", err, stderr.String())
	}
	if !strings.Contains(got[1], `PUT "svc/b" "two"`) || !strings.Contains(got[2], `PUT "svc/a" "three"`) {
		t.Fatalf("watch printed %q", got)
	}
	var firstRev uint64
	fmt.Sscanf(got[0], "%d", &firstRev)

	run := func(args ...string) (string, int) {
		out, err := exec.Command(pc.bin, append(args, ep)...).CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	if out, code := run("history", "svc/a"); code != 0 || !strings.Contains(out, `"three"`) || !strings.Contains(out, "one-") {
		t.Fatalf("history: exit %d %s", code, out)
	}
	if out, code := run("get", "svc/a", "--revision", fmt.Sprint(firstRev)); code != 0 || !strings.HasPrefix(out, "one-") {
		t.Fatalf("get --revision %d: exit %d %s", firstRev, code, out)
	}
	if out, code := run("compact", fmt.Sprint(firstRev+1)); code != 0 || !strings.Contains(out, "compacted at revision") {
		t.Fatalf("compact: exit %d %s", code, out)
	}
	if out, code := run("get", "svc/a", "--revision", fmt.Sprint(firstRev)); code == 0 || !strings.Contains(out, "compacted") {
		t.Fatalf("get below the compaction: exit %d %s", code, out)
	}
}
