package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pando/pando/pki"
)

func certCmd() *cobra.Command {
	var dir string
	var valid time.Duration
	cmd := &cobra.Command{
		Use:   "cert",
		Short: "Make a test CA and certificates for nodes and clients",
		Long: `Make a test certificate authority and certificates signed by it (ECDSA P-256), for
TLS between nodes and clients. Files go into --dir and are never overwritten.

  pando cert ca                                           # certs/ca.crt, certs/ca.key
  pando cert node node1 --hosts 127.0.0.1,localhost       # certs/node1.crt, node1.key
  pando cert client admin                                 # certs/admin.crt, admin.key

  pando server --tls-cert certs/node1.crt --tls-key certs/node1.key --tls-ca certs/ca.crt ...
  pando get k --tls-ca certs/ca.crt [--tls-cert certs/admin.crt --tls-key certs/admin.key]

For production, use your own PKI: a node needs a certificate valid for server and client
authentication, with every name or address peers and clients reach it at.`,
	}
	cmd.PersistentFlags().StringVar(&dir, "dir", "certs", "directory of the CA and the certificates")
	cmd.PersistentFlags().DurationVar(&valid, "valid", 365*24*time.Hour, "validity")
	cmd.AddCommand(&cobra.Command{
		Use:   "ca",
		Short: "Make a CA (ca.crt, ca.key)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := pki.NewCA("pando test CA", valid)
			if err != nil {
				return err
			}
			if err := ca.WriteCA(dir); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s and %s (keep the key private)\n", filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
			return nil
		},
	})
	var hosts string
	node := &cobra.Command{
		Use:   "node NAME --hosts H1,H2",
		Short: "Make a node certificate (server and client use) for the given hosts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return issue(cmd, dir, args[0], pki.Node, hosts, valid)
		},
	}
	node.Flags().StringVar(&hosts, "hosts", "127.0.0.1,localhost,::1", "comma-separated IP addresses and DNS names the node is reached at")
	cmd.AddCommand(node)
	cmd.AddCommand(&cobra.Command{
		Use:   "client NAME",
		Short: "Make a client certificate (client use only: it cannot act as a node)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return issue(cmd, dir, args[0], pki.Client, "", valid)
		},
	})
	return cmd
}

func issue(cmd *cobra.Command, dir, name string, kind pki.Kind, hosts string, valid time.Duration) error {
	if strings.ContainsAny(name, `/\`) || name == "ca" {
		return usageError{fmt.Errorf("NAME %q must be a plain file name other than ca", name)}
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		return err
	}
	var hs []string
	for _, h := range strings.Split(hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hs = append(hs, h)
		}
	}
	c, k, err := ca.Issue(name, kind, hs, valid)
	if err != nil {
		return usageError{err}
	}
	if err := pki.WritePair(dir, name, c, k); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "wrote %s and %s\n", filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"))
	return nil
}
