package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
)

// globalOptions are the flags every command has.
type globalOptions struct {
	dataDir  string
	api      string
	logLevel string
}

func newRootCmd() *cobra.Command {
	g := &globalOptions{}
	root := &cobra.Command{
		Use:   "thaw",
		Short: "Node-level image pre-distribution and cold-start acceleration",
		Long: `thaw runs on every node as a pull-through registry mirror for containerd,
keeping image blobs in a verified local store so that containers start without
waiting on the registry.

Start the daemon with 'thaw daemon'; the other commands talk to it.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.dataDir, "data-dir", defaultDataDir(), "directory for the content store, catalog and API socket")
	pf.StringVar(&g.api, "api", "", "the daemon's API: a unix socket path or host:port (default <data-dir>/thaw.sock)")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.AddCommand(
		newDaemonCmd(g),
		newPrefetchCmd(g),
		newImagesCmd(g),
		newGCCmd(g),
		newStatusCmd(g),
		newDemoCmd(g),
		newPeersCmd(g),
		newReplayCmd(g),
		newHintCmd(g),
		newJobsCmd(g),
		newActivityCmd(g),
		newConvertCmd(),
		newCertsCmd(),
		newVersionCmd(),
	)
	return root
}

// apiAddr is the API address the CLI and the daemon agree on.
func (g *globalOptions) apiAddr() string {
	if g.api != "" {
		return g.api
	}
	return filepath.Join(g.dataDir, "thaw.sock")
}

func (g *globalOptions) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})), nil
}

// defaultDataDir is /var/lib/thaw for root, else the user's data directory.
func defaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/thaw"
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "thaw")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "thaw")
	}
	return filepath.Join(os.TempDir(), "thaw")
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print thaw's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), "thaw", version)
			return err
		},
	}
}
