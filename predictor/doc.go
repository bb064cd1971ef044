// Package predictor decides which container images to pre-distribute
// before they are needed: it learns per-app invocation patterns, predicts
// which apps will start instances soon and on how many nodes, and turns
// that into prefetch jobs at layer granularity within each node's disk
// budget.
//
// This package holds the vocabulary and the contracts: Observation (one
// app's minute), Prediction, Job (a plain value the leader can replicate:
// node, layers, deadline, pin expiry), the Model, Planner, Catalog and
// ClusterView interfaces, the Engine that runs one planning step, and the
// Metrics. The parts live below it:
//
//   - predictor/model: the models (hybrid histogram of "Serverless in the
//     Wild", periodic/timer detection, burst) and thaw's ensemble of them.
//   - predictor/planner: predictions to jobs: shared layers wide, an app's
//     own layers to as many nodes as it will need, pins as leases that
//     lapse with the prediction, catalog cover into free disk.
//   - predictor/trace: loading recorded traces (Azure Functions 2019).
//   - predictor/sim: replaying a trace through the same Engine, models and
//     planner in simulated time against baselines (`thaw replay`).
//
// Everything here is deterministic, in-memory logic driven by explicit
// times: no goroutines, no wall clock, no I/O. The daemon integration
// (events from containerd and POST /api/v1/events aggregated per minute on
// the leader, jobs in the Raft state, pins in the node's store, `thaw
// prefetch --nodes`) drives the same Engine from a Clock and implements
// ClusterView and Catalog over the cluster state; it is not in this
// package. Jobs run through the node's prefetch path (puller/prefetch) and
// pins map to the store's Pin/Unpin.
package predictor
