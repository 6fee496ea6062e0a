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
	root.AddCommand(serverCmd(), demoCmd(), benchCmd(), versionCmd(), checkCmd(), rangesCmd(), debugCmd(), eventsCmd())
	root.AddCommand(clientCmds()...)
	if err := root.Execute(); err != nil {
		msg := err.Error()
		if !strings.HasPrefix(msg, "pando:") {
			msg = "pando: " + msg
		}
		fmt.Fprintln(os.Stderr, msg)
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
