package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"

	"github.com/thaw-dev/thaw/lazyload/convert"
	"github.com/thaw-dev/thaw/lazyload/record"
)

func newConvertCmd() *cobra.Command {
	var (
		o        convert.Options
		listFile string
		insecure bool
		doRecord bool
		rec      record.Config
	)
	cmd := &cobra.Command{
		Use:   "convert SRC DST",
		Short: "Convert an image to eStargz for lazy loading and push it",
		Long: `Convert the image SRC to eStargz, layer by layer on all cores, and push it as
DST. Each layer is annotated with its TOC digest and uncompressed size, which
the stargz snapshotter (thaw daemon --snapshotter-socket) needs to mount it
lazily.

Files the workload reads at start-up go first in their layers and are fetched
when the layer is mounted; the rest is fetched when read, or in the
background. Name them with --prioritize (paths or globs inside the image, in
the order the workload reads them) or --prioritize-from (a file with one per
line), or let thaw find them with --record: it runs SRC's entrypoint once in
containerd (--containerd; root needed), records the files the workload opens
until it exits or prints the --ready line, and puts those first. Without any
of these nothing is prefetched.

  thaw convert registry.example.com/app:v1 registry.example.com/app:v1-esgz \
    --prioritize /usr/bin/python3 --prioritize '/usr/lib/python3.11/*.py'
  thaw convert registry.example.com/app:v1 registry.example.com/app:v1-esgz \
    --record --ready "listening on"`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if listFile != "" {
				list, err := readList(listFile)
				if err != nil {
					return err
				}
				o.Prioritize = append(o.Prioritize, list...)
			}
			w := cmd.OutOrStdout()
			if doRecord {
				start := time.Now()
				rec.Insecure = insecure
				files, err := record.Files(cmd.Context(), args[0], rec)
				if err != nil {
					return fmt.Errorf("--record: %w", err)
				}
				fmt.Fprintf(w, "recorded %d start-up files in %.1fs\n", len(files), time.Since(start).Seconds())
				o.Prioritize = append(o.Prioritize, files...)
			}
			rep, err := convert.Copy(cmd.Context(), args[0], args[1], insecure, o,
				remote.WithAuthFromKeychain(authn.DefaultKeychain))
			if err != nil {
				return err
			}
			var size int64
			for i, l := range rep.Layers {
				size += l.Size
				fmt.Fprintf(w, "layer %d: %s -> %s (%s, %d prioritized files, %.1fs)\n",
					i, l.Source.Hex[:12], l.Digest.Hex[:12], human(l.Size), len(l.Prioritized), l.Duration.Seconds())
			}
			_, err = fmt.Fprintf(w, "converted %s to %s in %.1fs: %d layers, %s, %d prioritized files\n",
				args[0], args[1], rep.Duration.Seconds(), len(rep.Layers), human(size), rep.Prioritized())
			return err
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.Prioritize, "prioritize", nil, "a start-up file: a path or glob inside the image (repeatable, in reading order)")
	f.StringVar(&listFile, "prioritize-from", "", "a file listing start-up files, one path or glob a line (# comments)")
	f.BoolVar(&insecure, "insecure", false, "reach both registries over plain HTTP")
	f.IntVar(&o.Parallelism, "parallel", 0, "layers converted at once (default: the number of cores)")
	f.BoolVar(&doRecord, "record", false, "run SRC once in containerd and put the files it opens first")
	f.StringVar(&rec.Containerd, "containerd", "/run/containerd/containerd.sock", "containerd's socket, for --record")
	f.DurationVar(&rec.Timeout, "record-timeout", 60*time.Second, "--record: stop recording after this long if the workload neither exits nor prints --ready")
	f.StringVar(&rec.Ready, "ready", "", "--record: stop recording at the first output line containing this")
	f.IntVar(&o.CompressionLevel, "compression-level", 0, "gzip level of the chunks, 1-9 (default 6)")
	return cmd
}

// readList reads one entry a line, skipping blank lines and # comments.
func readList(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--prioritize-from: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" && !strings.HasPrefix(line, "#") {
			out = append(out, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("--prioritize-from %s: %w", path, err)
	}
	return out, nil
}
