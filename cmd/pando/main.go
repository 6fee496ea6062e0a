// Command pando is the one pando binary: the server, an in-process demo
// cluster, client commands and a load generator.
package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

var version = "dev"

func main() {
	var configFile string
	root := &cobra.Command{
		Use:   "pando",
		Short: "pando: a sharded, replicated, strongly consistent key-value store",
		Long: `pando: a sharded, replicated, strongly consistent key-value store.

Every flag can also come from the environment (PANDO_ and the flag's name in capitals,
--data-dir is PANDO_DATA_DIR) or from a JSON config file (--config FILE or PANDO_CONFIG:
{"data-dir": "/var/lib/pando", ...}). Precedence: flags > environment > file > defaults.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return applyConfig(cmd, configFile)
		},
	}
	root.PersistentFlags().StringVar(&configFile, "config", "", "JSON file of flag values (default $PANDO_CONFIG)")
	root.AddCommand(serverCmd(), demoCmd(), benchCmd(), versionCmd(), checkCmd(), rangesCmd(), debugCmd(), splitCmd(), eventsCmd(), certCmd(), nodeCmd(), rangeCmd(), rebalanceCmd())
	root.AddCommand(clientCmds()...)
	if err := root.Execute(); err != nil {
		var reported reportedError
		if errors.As(err, &reported) {
			os.Exit(exitCode(err)) // the command said what went wrong
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "pando:") {
			msg = "pando: " + msg
		}
		fmt.Fprintln(os.Stderr, msg)
		if h := hint(msg); h != "" {
			fmt.Fprintln(os.Stderr, "hint: "+h)
		}
		os.Exit(exitCode(err))
	}
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print pando's version, commit and Go version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			commit, dirty := "unknown", ""
			goVersion := runtime.Version()
			if bi, ok := debug.ReadBuildInfo(); ok {
				for _, s := range bi.Settings {
					switch {
					case s.Key == "vcs.revision":
						commit = s.Value
					case s.Key == "vcs.modified" && s.Value == "true":
						dirty = " (modified)"
					}
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pando %s\ncommit %s%s\n%s %s/%s\n", version, commit, dirty, goVersion, runtime.GOOS, runtime.GOARCH)
		},
	}
}

// hint says what to do about errors whose cause is not obvious.
func hint(msg string) string {
	switch {
	case strings.Contains(msg, "error reading server preface"), strings.Contains(msg, "first record does not look like a TLS handshake") && !strings.Contains(msg, "https"):
		return "the cluster may use TLS: pass its CA with --tls-ca (and --tls-cert/--tls-key for mutual TLS)"
	case strings.Contains(msg, "does not look like a TLS handshake"), strings.Contains(msg, "server gave HTTP response to HTTPS client"):
		return "the cluster does not use TLS: drop --tls-ca, --tls-cert and --tls-key"
	case strings.Contains(msg, "certificate signed by unknown authority"):
		return "pass the CA that signed the nodes' certificates with --tls-ca"
	case strings.Contains(msg, "certificate is valid for"), strings.Contains(msg, "doesn't contain any IP SANs"):
		return "the node's certificate does not name the address you used: reach it by a name in its certificate, or reissue it with pando cert node NAME --hosts ..."
	case strings.Contains(msg, "connection refused"):
		return "no pando node listens there: check --endpoints (default 127.0.0.1:7001) and that the nodes run"
	}
	return ""
}
