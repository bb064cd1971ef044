package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/p2p/certs"
	"github.com/thaw-dev/thaw/puller/api"
)

func newPeersCmd(g *globalOptions) *cobra.Command {
	var asJSON bool
	var blob string
	cmd := &cobra.Command{
		Use:   "peers",
		Short: "List the cluster's members, the leader and liveness (and, with --blob, a blob's holders and seeder)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p peersAnswer
			path := "/api/v1/peers"
			if blob != "" {
				path += "?blob=" + blob
			}
			if err := api.NewClient(g.apiAddr()).Get(cmd.Context(), path, &p); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return writeJSON(out, p)
			}
			fmt.Fprintf(out, "this node: %s, leader: %s\n", p.Self.ID, orNone(string(p.Leader)))
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tROLE\tPEER ADDRESS\tALIVE\tLAST SEEN")
			for _, m := range p.Members {
				role := "client"
				if m.Voter {
					role = "voter"
				}
				if m.ID == p.Leader {
					role = "leader"
				}
				seen := "-"
				if !m.LastSeen.IsZero() {
					seen = time.Since(m.LastSeen).Round(time.Second).String() + " ago"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\n", m.ID, role, orNone(m.PeerAddr), m.Alive, seen)
			}
			tw.Flush()
			for _, w := range quorumWarnings(p.Members) {
				fmt.Fprintln(out, "warning:", w)
			}
			if p.Blob != nil {
				fmt.Fprintf(out, "\nblob %s (%s): seeder %s\n", p.Blob.Digest, human(p.Blob.Size), orNone(string(p.Blob.Seeder)))
				for _, h := range p.Blob.Holders {
					state := "in progress"
					if h.Complete {
						state = "complete"
					}
					fmt.Fprintf(out, "  %s %s\n", h.Node, state)
				}
			}
			if p.Error != "" {
				fmt.Fprintln(out, "warning:", p.Error)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&blob, "blob", "", "also show this blob's holders and seeder (sha256:...)")
	cmd.AddCommand(newPeersRemoveCmd(g))
	return cmd
}

func newPeersRemoveCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "remove NODE",
		Short: "Take a node gone for good out of the cluster (out of the Raft voters, its holdings dropped)",
		Long: `Take a node that is gone for good out of the cluster: out of the Raft
configuration if it is a voter, so that it no longer counts towards the
quorum and the next node that joins able to vote takes its seat, and out of
the members with everything it held. The node must have been silent for
longer than the cluster's expiry and must not lead (stop the leader first;
another voter takes over). A removed node that comes back joins again.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := removePeerRequest{Node: p2p.NodeID(args[0])}
			var out removePeerRequest
			if err := api.NewClient(g.apiAddr()).Post(cmd.Context(), "/api/v1/peers/remove", req, &out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s from the cluster\n", req.Node)
			return nil
		},
	}
}

// quorumWarnings names the voters that are not alive and what they cost:
// Raft keeps working while a majority of its voters is, and a voter gone
// for good counts against that majority until it is removed.
func quorumWarnings(members []p2p.Member) []string {
	var voters int
	var down []string
	for _, m := range members {
		if !m.Voter {
			continue
		}
		voters++
		if !m.Alive {
			down = append(down, string(m.ID))
		}
	}
	if len(down) == 0 {
		return nil
	}
	alive, majority := voters-len(down), voters/2+1
	state := fmt.Sprintf("%d more voter failure(s) stop the cluster's coordination", alive-majority+1)
	if alive < majority {
		state = "the cluster has lost its majority: coordination is stopped (nodes read blobs from the registry)"
	}
	return []string{fmt.Sprintf("voter(s) %s not alive: %d of %d voters up, %d needed; %s. A voter gone for good: `thaw peers remove NODE`.",
		strings.Join(down, ", "), alive, voters, majority, state)}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func newCertsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Create the cluster CA and node certificates for the peer network's mutual TLS",
		Long: `Peers authenticate each other with certificates of one cluster CA.

  thaw certs init --dir ca/                      create the CA (keep ca-key.pem secret)
  thaw certs issue --ca-dir ca/ --out node1/ --name node1 --host 10.0.0.5

then start each node with --tls-dir <its directory> (or copy it to
<data-dir>/tls). On Kubernetes, store a node directory in a Secret.`,
	}
	var dir string
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create a cluster CA",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := certs.InitCA(dir); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cluster CA written to %s\n", dir)
			return nil
		},
	}
	initCmd.Flags().StringVar(&dir, "dir", "thaw-ca", "directory for ca.pem and ca-key.pem")
	var caDir, out, nodeName string
	var hosts []string
	issueCmd := &cobra.Command{
		Use:   "issue",
		Short: "Issue a node certificate signed by the cluster CA",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if nodeName == "" {
				return fmt.Errorf("--name is required")
			}
			if err := certs.Issue(caDir, out, nodeName, hosts); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "certificate for %s written to %s\n", nodeName, out)
			return nil
		},
	}
	issueCmd.Flags().StringVar(&caDir, "ca-dir", "thaw-ca", "the cluster CA directory")
	issueCmd.Flags().StringVar(&out, "out", "", "directory for ca.pem, cert.pem and key.pem (required)")
	issueCmd.Flags().StringVar(&nodeName, "name", "", "the node's name (its --node-id)")
	issueCmd.Flags().StringSliceVar(&hosts, "host", nil, "IP addresses and DNS names of the node (repeatable)")
	issueCmd.MarkFlagRequired("out")
	cmd.AddCommand(initCmd, issueCmd)
	return cmd
}
