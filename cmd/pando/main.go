// Command pando is the one pando binary: the server, an in-process demo
// cluster, client commands and a load generator.
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

var version = "dev"

func main() {
	root := &cobra.Command{
		Use:           "pando",
		Short:         "pando: a sharded, replicated, strongly consistent key-value store",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serverCmd(), demoCmd(), benchCmd(), versionCmd(), checkCmd(), rangesCmd(), debugCmd(), eventsCmd(), certCmd())
	root.AddCommand(clientCmds()...)
	if err := root.Execute(); err != nil {
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
		Short: "Print pando's version",
		Args:  cobra.NoArgs,
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), "pando", version) },
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
