// Package live runs the predictor inside the daemon, on the peer network's
// replicated records (p2p.RecordStore), so that what the leader plans on
// survives a leader change.
//
// Events come in on every node: container starts from containerd's event
// stream (WatchContainerd, then Service.Started), invocation counts a FaaS
// platform posts (POST /api/v1/events, schema on Event), and hints (POST
// /api/v1/hints, `thaw hint`). Each node counts them per app per minute in
// a bounded Aggregator (a rate limit and a cap on apps; what is over is
// refused with 429 and counted) and hands finished minutes to the cluster
// every Config.Flush as activity records.
//
// The leader, once a minute and Config.Grace after it ended, merges the
// nodes' activity records into one record per minute (kept Config.History,
// 4 hours), feeds the minute to the model, and runs predictor.Engine.Step
// with the hints in force: the planner's new jobs become job records, per
// node. A node that becomes leader rebuilds its model from the minute
// records before it plans, so the model survives a leader change as far as
// the history reaches; the catalog (app to image) is rebuilt from the same
// records and the hints, and images are resolved to layers through the
// node's manifest path.
//
// Every node polls its job records every Config.Poll and runs them: a
// pinned job pins its layers first (a lease until the job expires, kept in
// Config.LeaseFile so a restart still releases it), then fetches them
// through the node's fetcher (peers first, then the origin); a background
// job fetches into free disk only and pins nothing. The node reports each
// job's state in a job-state record; `thaw prefetch --nodes` and GET
// /api/v1/jobs read them.
//
// Hits are container starts of an app on a node where a job prepared it;
// waste is what a job fetched that no start used before the job lapsed.
package live
