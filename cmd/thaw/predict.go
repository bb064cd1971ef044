package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/predictor"
	"github.com/thaw-dev/thaw/predictor/live"
	"github.com/thaw-dev/thaw/puller/api"
)

// predictConfig is the daemon's prediction settings.
type predictConfig struct {
	Enabled          bool
	ContainerdEvents string // containerd socket to follow; empty: none
	Budget           int64  // 0: the store quota
}

// newPredictor wires the live predictor, or returns nil when it is off.
func newPredictor(cfg predictConfig, dataDir string, self p2p.NodeID, c live.Cluster, images live.Images, blobs live.Blobs, st live.Store, reg prometheus.Registerer, log *slog.Logger) (*live.Service, error) {
	if !cfg.Enabled {
		return nil, nil
	}
	lc := live.DefaultConfig()
	lc.Node = self
	lc.Budget = cfg.Budget
	lc.LeaseFile = filepath.Join(dataDir, "predictor-leases.json")
	return live.New(lc, live.Deps{Cluster: c, Images: images, Blobs: blobs, Store: st, Metrics: metrics.NewPredictor(reg), Log: log})
}

func newHintCmd(g *globalOptions) *cobra.Command {
	var (
		at   string
		h    live.Hint
		rate int
	)
	cmd := &cobra.Command{
		Use:   "hint FUNCTION IMAGE",
		Short: "Tell the predictor a function is about to be invoked, so its image is pre-distributed",
		Long: `Tell the predictor that FUNCTION, which runs IMAGE, will be invoked at --at
(default now) at --rate invocations a minute (default: one instance), for
--for (default 10m). The leader plans on the hint at its next minute like on
a prediction of its own: the image's layers go to as many nodes as the rate
needs and stay pinned until the hint lapses.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			h.Function, h.Image, h.Rate = args[0], args[1], rate
			if at != "" {
				t, err := time.Parse(time.RFC3339, at)
				if err != nil {
					return fmt.Errorf("--at %q: want an RFC 3339 time such as 2026-11-26T18:00:00Z: %w", at, err)
				}
				h.At = t
			}
			var got live.Hint
			if err := api.NewClient(g.apiAddr()).Post(cmd.Context(), "/api/v1/hints", h, &got); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "hint recorded: %s (%s) from %s for %s", got.Function, got.Image, got.At.Format(time.RFC3339), got.For)
			if got.Rate > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), " at %d/min", got.Rate)
			}
			fmt.Fprintln(cmd.OutOrStdout())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&at, "at", "", "when the invocations start, RFC 3339 (default: now)")
	f.IntVar(&rate, "rate", 0, "expected invocations per minute")
	f.DurationVar(&h.For, "for", 10*time.Minute, "how long the hint holds")
	return cmd
}

func newJobsCmd(g *globalOptions) *cobra.Command {
	var node string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "jobs",
		Short: "List the cluster's prefetch jobs in force, with their states",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var jobs []live.JobView
			path := "/api/v1/jobs"
			if node != "" {
				path += "?node=" + url.QueryEscape(node)
			}
			if err := api.NewClient(g.apiAddr()).Get(cmd.Context(), path, &jobs); err != nil {
				return err
			}
			return printJobs(cmd.OutOrStdout(), jobs, asJSON)
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "only this node's jobs")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printJobs(out io.Writer, jobs []live.JobView, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(jobs)
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tAPP\tREASON\tLAYERS\tSIZE\tSTATE\tEXPIRES\tERROR")
	for _, j := range jobs {
		app := string(j.App)
		if app == "" {
			app = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", j.Node, app, j.Reason, len(j.Layers), human(j.Bytes()), j.Status.State, j.Expires.Format(time.RFC3339), j.Status.Error)
	}
	return tw.Flush()
}

// prefetchOnNodes records prefetch jobs for images on cluster nodes and,
// with wait, follows them until each is done or failed.
func prefetchOnNodes(cmd *cobra.Command, g *globalOptions, images []string, nodes string, pinFor time.Duration, wait bool) error {
	c := api.NewClient(g.apiAddr())
	out := cmd.OutOrStdout()
	ids := map[string]bool{}
	for _, img := range images {
		var jobs []predictor.Job
		if err := c.Post(cmd.Context(), "/api/v1/jobs", live.JobRequest{Image: img, Nodes: nodes, Pin: pinFor}, &jobs); err != nil {
			return err
		}
		for _, j := range jobs {
			ids[j.ID] = true
			fmt.Fprintf(out, "%s: job for %s (%d layers, %s)\n", img, j.Node, len(j.Layers), human(j.Bytes()))
		}
	}
	if !wait {
		fmt.Fprintln(out, "'thaw jobs' shows their progress")
		return nil
	}
	for {
		var all []live.JobView
		if err := c.Get(cmd.Context(), "/api/v1/jobs", &all); err != nil {
			return err
		}
		var mine []live.JobView
		open, failed := 0, 0
		for _, j := range all {
			if !ids[j.ID] {
				continue
			}
			mine = append(mine, j)
			switch j.Status.State {
			case predictor.JobDone:
			case predictor.JobFailed:
				failed++
			default:
				open++
			}
		}
		if open == 0 && len(mine) == len(ids) {
			if err := printJobs(out, mine, false); err != nil {
				return err
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d prefetch jobs failed", failed, len(ids))
			}
			return nil
		}
		select {
		case <-cmd.Context().Done():
			return cmd.Context().Err()
		case <-time.After(time.Second):
		}
	}
}

func newActivityCmd(g *globalOptions) *cobra.Command {
	var (
		since  time.Duration
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "activity",
		Short: "Show the per-minute activity (invocations, container starts) the predictor learns from",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var acts []live.Activity
			path := "/api/v1/activity?since=" + url.QueryEscape(time.Now().Add(-since).UTC().Format(time.RFC3339))
			if err := api.NewClient(g.apiAddr()).Get(cmd.Context(), path, &acts); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(acts)
			}
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "MINUTE\tAPP\tINVOCATIONS\tSTARTS\tIMAGE")
			for _, a := range acts {
				for _, c := range a.Apps {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", predictor.MinuteStart(a.Minute).Format("15:04"), c.App, c.Invocations, c.Starts, c.Image)
				}
			}
			return tw.Flush()
		},
	}
	cmd.Flags().DurationVar(&since, "since", time.Hour, "how far back to show")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
