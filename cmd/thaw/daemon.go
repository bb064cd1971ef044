package main

import (
	"fmt"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/thaw-dev/thaw/p2p/swarm"
	"github.com/thaw-dev/thaw/puller/catalog"
	"github.com/thaw-dev/thaw/puller/fetch"
)

func newDaemonCmd(g *globalOptions) *cobra.Command {
	var (
		configFile string
		cfg        = nodeConfig{Resolver: catalog.DefaultResolverConfig()}
		quota      byteSize
		// size flags of the peer network, copied into cfg.Peer.Swarm in RunE
		upRate, downRate, pieceSize byteSize
		predictBudget               byteSize
		backgroundRate              = byteSize(fetch.DefaultConfig().BackgroundRate)
	)
	cfg.Peer.Swarm = swarm.DefaultConfig()
	pieceSize = byteSize(cfg.Peer.Swarm.PieceSize)
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the node daemon: registry mirror, content store, local API and metrics",
		Long: `Run the node daemon. With no flags it runs as a single node on embedded
defaults: data under /var/lib/thaw as root (else the user's data directory),
the mirror on 127.0.0.1:5050, metrics on 127.0.0.1:5052/metrics and the API on
<data-dir>/thaw.sock.

Every flag can also be set with a THAW_<FLAG> environment variable (dashes as
underscores, lists comma-separated) or as a key of the YAML --config file; flags
win over the environment, which wins over the file. The file may also hold
registry credentials:

  auths:
    registry.example.com:
      username: robot
      password: secret

Credentials are also read from docker's config.json ($DOCKER_CONFIG).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rest, err := applyConfig(cmd, configFile)
			if err != nil {
				return err
			}
			if cfg.Auths, err = parseAuths(rest); err != nil {
				return err
			}
			log, err := g.logger(os.Stderr)
			if err != nil {
				return err
			}
			cfg.DataDir, cfg.APIAddr, cfg.Quota = g.dataDir, g.apiAddr(), int64(quota)
			cfg.Peer.Swarm.UploadRate, cfg.Peer.Swarm.DownloadRate, cfg.Peer.Swarm.PieceSize = int64(upRate), int64(downRate), int64(pieceSize)
			cfg.Predict.Budget = int64(predictBudget)
			cfg.BackgroundRate = int64(backgroundRate)
			n, err := newNode(cmd.Context(), cfg, log)
			if err != nil {
				return err
			}
			return n.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "YAML config file (keys are flag names)")
	f.StringVar(&cfg.MirrorAddr, "mirror-addr", "127.0.0.1:5050", "address of the registry mirror containerd pulls through")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", "127.0.0.1:5052", "address serving Prometheus /metrics")
	f.StringArrayVar(&cfg.Insecure, "insecure-registry", nil, "registry HOST[:PORT] reached over plain HTTP or unverified TLS (repeatable)")
	f.StringVar(&cfg.DefaultRegistry, "default-registry", "docker.io", "upstream registry for requests without ?ns=")
	f.Var(&quota, "store-quota", "disk quota of the content store, e.g. 50GiB (default: half the data directory's file system)")
	f.DurationVar(&cfg.Resolver.TTL, "tag-ttl", cfg.Resolver.TTL, "how long a resolved tag is trusted before asking the registry again")
	f.BoolVar(&cfg.Resolver.ServeStale, "serve-stale-tags", cfg.Resolver.ServeStale, "answer with the last known digest when the registry is unreachable")
	f.IntVar(&cfg.Concurrency, "prefetch-concurrency", 3, "blobs fetched at once by a prefetch")
	f.DurationVar(&cfg.BackgroundQuiet, "background-quiet", fetch.DefaultConfig().DemandQuiet, "the fill of blobs read by range waits until range reads have been quiet this long, so start-up reads have the link to themselves; 0: it does not wait")
	f.Var(&backgroundRate, "background-rate", "bytes per second the node spends filling in blobs read by range (lazy loading) beyond the ranges asked for, all blobs together, e.g. 32MiB; 0: unlimited")

	// The peer network.
	f.StringVar(&cfg.Peer.NodeID, "node-id", "", "this node's name in the cluster, stable across restarts (default: the host name)")
	f.StringVar(&cfg.Peer.TLSDir, "tls-dir", "", "cluster certificates (ca.pem, cert.pem, key.pem from `thaw certs`); default <data-dir>/tls if present. Without them the node runs alone")
	f.StringVar(&cfg.Peer.AdvertiseAddr, "advertise-addr", "", "IP or host name other nodes reach this node at (default: its first non-loopback IPv4 address)")
	f.StringVar(&cfg.Peer.PeerAddr, "peer-addr", "0.0.0.0:5051", "listen address of the peer API (mutual TLS): coordination and blob pieces")
	f.StringVar(&cfg.Peer.RaftAddr, "raft-addr", "0.0.0.0:5053", "listen address of the Raft transport (mutual TLS)")
	f.StringSliceVar(&cfg.Peer.Join, "join", nil, "peer addresses HOST:PORT of cluster nodes to join (a DNS name resolving to several, as a headless Service, means all); empty: bootstrap")
	f.IntVar(&cfg.Peer.Voters, "voters", 3, "how many nodes run Raft; later nodes are clients of the voters")
	f.IntVar(&cfg.Peer.BootstrapExpect, "bootstrap-expect", 0, "with --join: when no node is in a cluster yet and this many answer at the join addresses, the one with the smallest --node-id bootstraps (a DaemonSet whose pods all join one headless Service); 0: never")
	f.DurationVar(&cfg.Peer.Timeout, "cluster-timeout", 2*time.Second, "bound on each call to the cluster; past it a node reads from the registry instead of waiting")
	f.Var(&upRate, "upload-rate", "limit on bytes per second uploaded to peers, e.g. 50MB (default: none)")
	f.Var(&downRate, "download-rate", "limit on bytes per second downloaded from peers (default: none)")
	f.IntVar(&cfg.Peer.Swarm.MaxUploads, "max-uploads", cfg.Peer.Swarm.MaxUploads, "piece uploads served at once")
	f.IntVar(&cfg.Peer.Swarm.Parallel, "piece-parallel", cfg.Peer.Swarm.Parallel, "pieces of one blob fetched from peers at once")
	f.IntVar(&cfg.Peer.Swarm.Window, "piece-window", cfg.Peer.Swarm.Window, "pieces past the reader's position that may be fetched (and held in memory)")
	f.IntVar(&cfg.Peer.Swarm.PieceUploads, "piece-uploads", cfg.Peer.Swarm.PieceUploads, "uploads of one piece served at once")
	f.IntVar(&cfg.Peer.Swarm.SeedCopies, "seed-copies", cfg.Peer.Swarm.SeedCopies, "peers the seeder of a blob in flight sends each piece to")
	f.Var(&pieceSize, "piece-size", "unit of peer transfer and verification (all nodes must agree)")
	f.BoolVar(&cfg.Peer.Swarm.Stream, "piece-stream", cfg.Peer.Swarm.Stream, "stream a blob in order from the holder that arrived just before this node (a burst's nodes form a chain), pulling pieces only for what the stream does not bring; false: pull every piece")

	// Prediction and pre-distribution.
	f.BoolVar(&cfg.Predict.Enabled, "predict", true, "take events, plan prefetch jobs on the leader and run this node's jobs")
	f.StringVar(&cfg.Predict.ContainerdEvents, "containerd-events", "", "containerd socket whose container starts feed the predictor, e.g. /run/containerd/containerd.sock (default: none)")
	f.Var(&predictBudget, "predict-budget", "disk this node offers to predicted content (default: the store quota)")

	// Lazy loading.
	f.StringVar(&cfg.Snapshotter.Socket, "snapshotter-socket", "", "serve the embedded stargz snapshotter on this unix socket, for containerd's proxy_plugins (empty: off)")
	f.StringVar(&cfg.Snapshotter.Root, "snapshotter-root", "", "the snapshotter's snapshots, FUSE mounts and cache (default <data-dir>/stargz)")
	f.StringVar(&cfg.Snapshotter.Mirror, "snapshotter-mirror", "", "URL the snapshotter sends its range reads to (default: this daemon's mirror)")

	return cmd
}

// parseAuths reads the config file's auths key; any other leftover key is an
// error, so a typo does not go unnoticed.
func parseAuths(rest map[string]any) (map[string]authn.AuthConfig, error) {
	auths := map[string]authn.AuthConfig{}
	for k, v := range rest {
		if k != "auths" {
			return nil, fmt.Errorf("config file: unknown key %q (keys are the daemon's flag names, and auths)", k)
		}
		b, err := yaml.Marshal(v)
		if err != nil {
			return nil, err
		}
		if err := yaml.Unmarshal(b, &auths); err != nil {
			return nil, fmt.Errorf("config file: auths: %w", err)
		}
	}
	return auths, nil
}
