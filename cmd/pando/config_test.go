package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

func configTestCmd(t *testing.T, args []string, file string) (*cobra.Command, *string, *time.Duration, *int, *string, error) {
	t.Helper()
	var addr, cluster string
	var timeout time.Duration
	var n int
	cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
	cmd.Flags().StringVar(&addr, "data-dir", "default", "")
	cmd.Flags().DurationVar(&timeout, "request-timeout", time.Second, "")
	cmd.Flags().IntVar(&n, "election-ticks", 8, "")
	cmd.Flags().StringVar(&cluster, "initial-cluster", "", "")
	cmd.SetArgs(args)
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	err := applyConfig(cmd, file)
	return cmd, &addr, &timeout, &n, &cluster, err
}

func TestConfigPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pando.json")
	if err := os.WriteFile(file, []byte(`{"data-dir": "from-file", "request-timeout": "3s", "election-ticks": 12, "initial-cluster": {"1": "a:1", "2": "b:2"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PANDO_REQUEST_TIMEOUT", "7s")
	_, dir, timeout, ticks, cluster, err := configTestCmd(t, []string{"--election-ticks", "20"}, file)
	if err != nil {
		t.Fatal(err)
	}
	// flag > env > file > default
	if *ticks != 20 || *timeout != 7*time.Second || *dir != "from-file" || *cluster != "1=a:1,2=b:2" {
		t.Fatalf("ticks %d timeout %v dir %q cluster %q", *ticks, *timeout, *dir, *cluster)
	}
	_, dir, _, _, _, err = configTestCmd(t, nil, "")
	if err != nil || *dir != "default" {
		t.Fatalf("defaults: %q %v", *dir, err)
	}
}

func TestConfigErrorsSayWhatToDo(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"data-dri": "x"}`), 0o644)
	if _, _, _, _, _, err := configTestCmd(t, nil, bad); err == nil || !strings.Contains(err.Error(), `"data-dri" is not a flag`) || !strings.Contains(err.Error(), "data-dir") {
		t.Fatalf("typo: %v", err)
	}
	os.WriteFile(bad, []byte(`{"election-ticks": "many"}`), 0o644)
	if _, _, _, _, _, err := configTestCmd(t, nil, bad); err == nil || !strings.Contains(err.Error(), "election-ticks") {
		t.Fatalf("bad value: %v", err)
	}
	t.Setenv("PANDO_ELECTION_TICKS", "x")
	if _, _, _, _, _, err := configTestCmd(t, nil, ""); err == nil || !strings.Contains(err.Error(), "PANDO_ELECTION_TICKS") {
		t.Fatalf("bad env: %v", err)
	}
}
