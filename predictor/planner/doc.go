// Package planner turns predictions into prefetch jobs: which layers go to
// which node, by when, and pinned for how long, within each node's disk
// budget.
//
// The rules, in the order they apply each step:
//
//   - Only predictions whose window opens within Config.Lead are acted on,
//     so that content arrives just before it is needed.
//   - Layers shared by many predicted-hot images (runtime base layers),
//     at least one per node, go to every node where there is free disk.
//   - An app's own layers go to as many nodes as its predicted instances
//     need, preferring nodes that already hold them (where the scheduler,
//     preferring nodes with the image, will put the instances), then nodes
//     not nearly full with the most pin budget left.
//   - Every job pins its layers until the prediction's window closes; the
//     pin is a lease that lapses by itself, so nothing has to remember to
//     release it, and a leader that takes over only needs the jobs in
//     force. Pins never take more than Config.PinFraction of a node's
//     budget, less what running instances use and a reserve; the rest of
//     the disk is the node's LRU cache.
//   - A further copy of an image for a predicted burst goes only into free
//     disk: each node that runs an instance keeps the image in use, so a
//     spread burst costs other images their place.
//   - With Config.Cover, every catalog image that no node holds goes, as a
//     background job that evicts nothing and pins nothing, to the node with
//     the most free disk: the scheduler sends an app's first instance where
//     its image is, so an app never invoked before starts from a local copy.
//
// The planner is a pure function of the predictions, the cluster view and
// the jobs in force: it keeps no state, does no I/O and starts no
// goroutines. It does not fetch, pin or evict (the node's store and the
// peer network do), and does not predict (predictor/model does).
package planner
