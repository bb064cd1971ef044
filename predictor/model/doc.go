// Package model holds the predictor's per-app models, each a
// predictor.Model fed one minute of invocation counts at a time:
//
//   - Histogram: the hybrid histogram policy of Shahrad et al., "Serverless
//     in the Wild" (USENIX ATC 2020): an idle-time histogram of 1-minute
//     bins over 4 hours whose head and tail percentiles, with margins, give
//     when to fetch an app's image and how long to keep it; a forecast of
//     the next idle time when most idle times fall out of range; a fixed
//     keep-alive when too little is known.
//   - Periodic: timer detection, the dominant period of an app's onsets,
//     and the next onsets to the minute.
//   - Burst: the trend of an app's instance count (rate × duration),
//     projected a few minutes ahead, so that its image reaches as many
//     nodes as will run it.
//   - KeepAlive: the fixed keep-alive baseline.
//   - Ensemble: thaw's combination of the first three: the periodic window
//     where there is a period, else the histogram's narrow windows that
//     open after a pre-warm gap (returns, not recency, which LRU handles),
//     with the burst model raising instance counts.
//
// Models are plain in-memory state machines: no goroutines, no clock of
// their own (time is what Observe and Predict are given, so a replay runs
// them in simulated time), no I/O. Memory is bounded by the apps seen: about
// a kilobyte per app for the histogram, less for the others. They predict;
// what to fetch where is predictor/planner's.
package model
