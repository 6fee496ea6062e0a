package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromium finds a headless-capable Chromium, or skips the test (fails it
// when PANDO_BROWSER_TESTS is set: CI that installed it wants the test).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("PANDO_BROWSER_TESTS") != "" {
		t.Fatal("PANDO_BROWSER_TESTS is set but chromium is not installed: run `make browser-deps`")
	}
	t.Skip("chromium is not installed: run `make browser-deps` (scripts/install-chromium.sh) to run the dashboard's browser test")
	return ""
}

// freeRun finds n consecutive free loopback ports and returns the first.
func freeRun(t *testing.T, n int) int {
	t.Helper()
	for try := 0; try < 50; try++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		base := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if base+n > 65535 {
			continue
		}
		ok := true
		for p := base; p < base+n && ok; p++ {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
			if err != nil {
				ok = false
				continue
			}
			l.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatal("no run of free ports")
	return 0
}

// artifactDir is where tests leave files for people to look at:
// $PANDO_ARTIFACTS, else artifacts/ at the repository's root.
func artifactDir(t *testing.T) string {
	dir := os.Getenv("PANDO_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startDemo runs `pando demo --load` and returns its console's URL.
func startDemo(t *testing.T) string {
	t.Helper()
	bin := pandoBinary(t)
	base := freeRun(t, 4)
	console := fmt.Sprintf("127.0.0.1:%d", base)
	cmd := exec.Command(bin, "demo", "--base-port", strconv.Itoa(base+1), "--console", console, "--load", "--load-rate", "100")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "dashboard and fault controls") {
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-done:
		t.Fatal("demo exited before it was ready")
	case <-time.After(30 * time.Second):
		t.Fatal("demo not ready")
	}
	return "http://" + console + "/"
}

// TestDashboardShowsFailoverInBrowser loads the demo's dashboard in
// headless Chromium, kills the leader with the page's button, and waits
// for the election in the timeline and the new leader in the ranges table.
func TestDashboardShowsFailoverInBrowser(t *testing.T) {
	exe := chromium(t)
	url := startDemo(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1400, 1000),
		chromedp.Flag("headless", "new"))
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer acancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, tcancel := context.WithTimeout(ctx, 90*time.Second)
	defer tcancel()

	leaderJS := `(() => { const r = document.querySelector('tr[data-range="1"]'); return r ? Number(r.dataset.leader) : 0; })()`
	var lead int
	if err := chromedp.Run(ctx, chromedp.Navigate(url), chromedp.WaitVisible(`tr[data-range="1"]`)); err != nil {
		t.Fatal(err)
	}
	waitJS := func(what, js string, out *int, ok func(int) bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if err := chromedp.Run(ctx, chromedp.Evaluate(js, out)); err != nil {
				t.Fatal(err)
			}
			if ok(*out) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		var html string
		_ = chromedp.Run(ctx, chromedp.OuterHTML("main", &html))
		t.Fatalf("%s: got %d; page: %.3000s", what, *out, html)
	}
	waitJS("a leader in the ranges table", leaderJS, &lead, func(v int) bool { return v != 0 })
	var elections int
	waitJS("the first election in the timeline", `document.querySelectorAll('#timeline li[data-type="election"]').length`, &elections, func(v int) bool { return v > 0 })
	t.Logf("leader of range 1: node %d", lead)

	kill := fmt.Sprintf(`button[data-action="kill"][data-node="%d"]`, lead)
	if err := chromedp.Run(ctx, chromedp.WaitEnabled(kill), chromedp.Click(kill)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var next int
	waitJS("a new leader in the ranges table", leaderJS, &next, func(v int) bool { return v != 0 && v != lead })
	var shown int
	waitJS("the election in the timeline", fmt.Sprintf(`document.querySelectorAll('#timeline li[data-type="election"][data-leader="%d"]').length`, next),
		&shown, func(v int) bool { return v > 0 })
	var killed int
	waitJS("the killed node marked down", fmt.Sprintf(`document.querySelector('#nodes tr[data-node="%d"]').dataset.up === "false" ? 1 : 0`, lead),
		&killed, func(v int) bool { return v == 1 })
	t.Logf("killed node %d from the page; node %d leads, shown after %v", lead, next, time.Since(start).Round(time.Millisecond))

	time.Sleep(1500 * time.Millisecond) // let rates fill in for the picture
	var png []byte
	if err := chromedp.Run(ctx, chromedp.FullScreenshot(&png, 100)); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(artifactDir(t), "dashboard-failover.png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(png))

	// Restart it from the page: it rejoins as a follower.
	restart := fmt.Sprintf(`button[data-action="restart"][data-node="%d"]`, lead)
	if err := chromedp.Run(ctx, chromedp.WaitEnabled(restart), chromedp.Click(restart)); err != nil {
		t.Fatal(err)
	}
	waitJS("the restarted node up", fmt.Sprintf(`document.querySelector('#nodes tr[data-node="%d"]').dataset.up === "true" ? 1 : 0`, lead),
		&killed, func(v int) bool { return v == 1 })
}
