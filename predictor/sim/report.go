package sim

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// WriteTable prints results as a table, one policy a row. Of the misses,
// "first" are an app's first start in the replay and "spill" starts on a
// node without the image while another node held it.
func WriteTable(w io.Writer, results []Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "policy\tstarts\tmisses\tmiss %\t(first\tspill)\tpull s\tprefetched GB\tunused GB\tprefetch hits\torigin GB\tpeer GB\tjobs\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.2f\t%d\t%d\t%.0f\t%.1f\t%.1f\t%d\t%.1f\t%.1f\t%d\t\n",
			r.Policy, r.Starts, r.Misses, 100*r.MissFraction(), r.FirstMisses, r.SpillMisses, r.PullSeconds,
			gb(r.PrefetchBytes), gb(r.UnusedBytes), r.Hits, gb(r.OriginBytes), gb(r.PeerBytes), r.Jobs)
	}
	return tw.Flush()
}

func gb(b int64) float64 { return float64(b) / GB }

// Find returns the result of the policy named name.
func Find(results []Result, name string) (Result, bool) {
	for _, r := range results {
		if r.Policy == name {
			return r, true
		}
	}
	return Result{}, false
}
