package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"

	"github.com/thaw-dev/thaw/lazyload/convert"
)

func newConvertCmd() *cobra.Command {
	var (
		o        convert.Options
		listFile string
		insecure bool
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
line). Without them nothing is prefetched.

  thaw convert registry.example.com/app:v1 registry.example.com/app:v1-esgz \
    --prioritize /usr/bin/python3 --prioritize '/usr/lib/python3.11/*.py'`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if listFile != "" {
				list, err := readList(listFile)
				if err != nil {
					return err
				}
				o.Prioritize = append(o.Prioritize, list...)
			}
			rep, err := convert.Copy(cmd.Context(), args[0], args[1], insecure, o,
				remote.WithAuthFromKeychain(authn.DefaultKeychain))
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
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
