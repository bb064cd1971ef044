// Package metrics defines thaw's Prometheus metrics and ships its Grafana
// dashboard (dashboard.json).
//
// Every metric is created by a constructor that takes a prometheus.Registerer,
// so there are no package-level collectors and tests can use their own
// registry. The package defines metrics; it does not serve them (cmd/thaw
// mounts promhttp) and it does not decide when they move (the owning packages
// do).
package metrics
