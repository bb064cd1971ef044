package main

import (
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/thaw-dev/thaw/puller/catalog"
)

func newDaemonCmd(g *globalOptions) *cobra.Command {
	var (
		configFile string
		cfg        = nodeConfig{Resolver: catalog.DefaultResolverConfig()}
		quota      byteSize
	)
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
