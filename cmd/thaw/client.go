package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/thaw-dev/thaw/puller/api"
)

func newPrefetchCmd(g *globalOptions) *cobra.Command {
	var (
		req    api.PrefetchRequest
		nodes  string
		pinFor time.Duration
	)
	cmd := &cobra.Command{
		Use:   "prefetch IMAGE...",
		Short: "Pull every blob of images into the node's store (and optionally into containerd)",
		Long: `Pull every blob of the images into the node's store: the node's platform
by default, or those given with --platform, or all with --all-platforms.

With --wait the command follows the job: a progress bar on a terminal, plain
progress lines otherwise, and a non-zero exit if it fails. Without it the job
runs in the daemon and 'thaw status' shows it.

With --containerd SOCKET the images are also imported into that containerd
(content and unpack into its snapshotter), so that 'ctr images ls' lists them
and 'ctr run' needs no pull. --containerd implies --wait.

With --nodes the images go to other nodes of the cluster instead, as prefetch
jobs in the cluster's replicated state (the same jobs the predictor issues):
--nodes all, --nodes N (the N nodes holding most of each image first), or
--nodes NAME,NAME. --pin-for keeps the images pinned there that long; without
it they are background content, the first to go when a node needs room.
--wait follows the jobs until every one is done or failed.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if nodes != "" {
				if req.Containerd != "" || len(req.Platforms) > 0 || req.AllPlatforms {
					return fmt.Errorf("--nodes takes the daemon's platform and no --containerd")
				}
				return prefetchOnNodes(cmd, g, args, nodes, pinFor, req.Wait)
			}
			req.Images = args
			if req.Containerd != "" {
				req.Wait = true
			}
			c := api.NewClient(g.apiAddr())
			out := cmd.OutOrStdout()
			if !req.Wait {
				job, err := c.Prefetch(cmd.Context(), req, nil)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "prefetch job %s queued; 'thaw status' shows its progress\n", job.ID)
				return nil
			}
			show := newProgress(out)
			_, err := c.Prefetch(cmd.Context(), req, show.message)
			show.finish()
			return err
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&req.Platforms, "platform", nil, "platforms to pull, os/arch[/variant] (default: the node's)")
	f.BoolVar(&req.AllPlatforms, "all-platforms", false, "pull every platform of a multi-platform image")
	f.BoolVar(&req.Wait, "wait", false, "follow the job until it ends")
	f.StringVar(&req.Containerd, "containerd", "", "also import into the containerd listening on this socket")
	f.StringVar(&req.Namespace, "namespace", "k8s.io", "containerd namespace for --containerd")
	f.StringVar(&req.Snapshotter, "snapshotter", "", "containerd snapshotter to unpack into (default: containerd's)")
	f.StringVar(&nodes, "nodes", "", "prefetch on cluster nodes: all, a number, or names separated by commas")
	f.DurationVar(&pinFor, "pin-for", 0, "with --nodes: keep the images pinned on the nodes this long")
	return cmd
}

// progress shows prefetch progress: a bar on a terminal, lines otherwise.
type progress struct {
	out      io.Writer
	bar      *progressbar.ProgressBar
	image    string
	lastLine time.Time
}

func newProgress(out io.Writer) *progress {
	return &progress{out: out}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (p *progress) message(m api.PrefetchMessage) {
	switch {
	case m.Event != nil:
		e := m.Event
		if isTerminal(p.out) {
			if p.bar == nil || p.image != e.Image {
				p.finish()
				p.image = e.Image
				p.bar = progressbar.DefaultBytes(e.Total, e.Image)
			}
			p.bar.ChangeMax64(e.Total)
			p.bar.Set64(e.Bytes)
			return
		}
		p.image = e.Image
		// Plain output: a line per finished blob, and at most one a second
		// otherwise.
		if e.Digest != "" || time.Since(p.lastLine) >= time.Second {
			p.lastLine = time.Now()
			what := ""
			if e.Digest != "" {
				what = " " + shortDigest(e.Digest)
				if e.Cached {
					what += " (cached)"
				} else {
					what += " done"
				}
			}
			fmt.Fprintf(p.out, "%s: %s / %s%s\n", e.Image, human(e.Bytes), human(e.Total), what)
		}
	case m.Result != nil:
		p.finish()
		r := m.Result
		fmt.Fprintf(p.out, "%s: %d blobs, %s in %.1fs (%d already on the node), digest %s\n",
			r.Image, r.Blobs, human(r.Bytes), r.Duration.Seconds(), r.Cached, r.Digest)
	case m.Imported != "":
		fmt.Fprintf(p.out, "%s: imported into containerd\n", m.Imported)
	}
}

func (p *progress) finish() {
	if p.bar != nil {
		p.bar.Finish()
		fmt.Fprintln(p.out)
		p.bar = nil
	}
}

func newImagesCmd(g *globalOptions) *cobra.Command {
	var blobs, asJSON bool
	cmd := &cobra.Command{
		Use:   "images",
		Short: "List the images the node has resolved (or, with --blobs, the blobs in its store)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := api.NewClient(g.apiAddr())
			out := cmd.OutOrStdout()
			if blobs {
				list, err := c.Blobs(cmd.Context())
				if err != nil {
					return err
				}
				if asJSON {
					return writeJSON(out, list)
				}
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "DIGEST\tSIZE\tPRESENT\tSTATE\tPINNED\tLAST USED")
				for _, b := range list {
					state := "complete"
					if !b.Complete {
						state = "partial"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\n", shortDigest(b.Digest), human(b.Size), human(b.Present), state, b.Pinned, b.LastUsed.Format(time.DateTime))
				}
				return tw.Flush()
			}
			list, err := c.Images(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(out, list)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "IMAGE\tDIGEST\tRESOLVED")
			for _, i := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", i.Ref, shortDigest(i.Digest), i.ResolvedAt.Format(time.DateTime))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&blobs, "blobs", false, "list the store's blobs instead of images")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newGCCmd(g *globalOptions) *cobra.Command {
	var target byteSize
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Evict least recently used blobs (never pinned or in-use ones)",
		Long: `Evict least recently used, unpinned, unused blobs until the store is at
most --target bytes (default: 90% of its quota), and stale partial blobs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var req api.GCRequest
			if cmd.Flags().Changed("target") {
				t := int64(target)
				req.Target = &t
			}
			res, err := api.NewClient(g.apiAddr()).GC(cmd.Context(), req)
			if err != nil {
				return err
			}
			var freed int64
			for _, b := range res.Removed {
				freed += b.Present
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %d blobs, %s; store now %s\n", len(res.Removed), human(freed), human(res.StoreBytes))
			return nil
		},
	}
	cmd.Flags().Var(&target, "target", "evict down to this many bytes, e.g. 10GiB; 0 evicts everything evictable")
	return cmd
}

func newStatusCmd(g *globalOptions) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the daemon's state: addresses, store usage, prefetch jobs, the cluster and blobs arriving",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := api.NewClient(g.apiAddr())
			s, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return writeJSON(out, s)
			}
			fmt.Fprintf(out, "thaw %s\ndata dir:  %s\nmirror:    %s\nmetrics:   http://%s/metrics\nstore:     %s of %s, %d blobs, %d partial\nimages:    %d\n",
				s.Version, s.DataDir, s.MirrorAddr, s.MetricsAddr, human(s.StoreBytes), human(s.QuotaBytes), s.Blobs, s.Partial, s.Images)
			for _, j := range s.Jobs {
				line := fmt.Sprintf("job %s: %s %s", j.ID, j.State, strings.Join(j.Images, " "))
				if j.Error != "" {
					line += ": " + j.Error
				}
				fmt.Fprintln(out, line)
			}
			return printClusterStatus(cmd.Context(), out, c)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// printClusterStatus shows the cluster as this node sees it, and for each
// blob arriving on this node, who seeds it and who holds it.
func printClusterStatus(ctx context.Context, out io.Writer, c *api.Client) error {
	var p peersAnswer
	if err := c.Get(ctx, "/api/v1/peers", &p); err != nil {
		return err
	}
	alive := 0
	for _, m := range p.Members {
		if m.Alive {
			alive++
		}
	}
	fmt.Fprintf(out, "cluster:   node %s, leader %s, %d members (%d alive as the leader sees it)\n", p.Self.ID, orNone(string(p.Leader)), len(p.Members), alive)
	if p.Error != "" {
		fmt.Fprintln(out, "           warning:", p.Error)
	}
	blobs, err := c.Blobs(ctx)
	if err != nil {
		return err
	}
	for _, b := range blobs {
		if b.Complete {
			continue
		}
		var bp peersAnswer
		if err := c.Get(ctx, "/api/v1/peers?blob="+b.Digest, &bp); err != nil || bp.Blob == nil {
			continue
		}
		holders := make([]string, 0, len(bp.Blob.Holders))
		for _, h := range bp.Blob.Holders {
			state := "partial"
			if h.Complete {
				state = "complete"
			}
			holders = append(holders, string(h.Node)+" ("+state+")")
		}
		fmt.Fprintf(out, "arriving:  %s %s of %s, seeder %s, holders %s\n", shortDigest(b.Digest), human(b.Present), human(b.Size),
			orNone(string(bp.Blob.Seeder)), strings.Join(holders, ", "))
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
