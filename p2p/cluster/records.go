package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/thaw-dev/thaw/p2p"
)

// Limits of the record store (p2p.RecordStore) when Config leaves them zero.
const (
	DefaultMaxRecordsPerKind = 50000
	DefaultMaxRecordValue    = 256 << 10
	// maxRecordKey bounds kinds, keys and node IDs of records.
	maxRecordKey = 512
)

// The record store's commands.
const (
	opRecords       = "records"        // Put, Del, Limit: one atomic change
	opExpireRecords = "expire-records" // Now: delete the records that expired by then
)

var (
	routeRecordsPut = route{"putRecords", http.MethodPost, "/p2p/v1/cluster/records/put", atLeader}
	routeRecordsGet = route{"records", http.MethodPost, "/p2p/v1/cluster/records/list", atVoter}
)

// recordsRequest is the body of routeRecordsPut and routeRecordsGet.
type recordsRequest struct {
	Put  []p2p.Record `json:"put,omitempty"`
	Del  []p2p.Record `json:"del,omitempty"`
	Kind string       `json:"kind,omitempty"`
	Node p2p.NodeID   `json:"node,omitempty"`
}

var _ p2p.RecordStore = (*Node)(nil)

// PutRecords implements p2p.RecordStore.
func (n *Node) PutRecords(ctx context.Context, put, del []p2p.Record) error {
	if len(put) == 0 && len(del) == 0 {
		return nil
	}
	if err := checkRecords(put, del, n.cfg.maxRecordValue()); err != nil {
		return fmt.Errorf("cluster putRecords: %w", err)
	}
	if !n.joined.Load() {
		return fmt.Errorf("cluster putRecords: %w: this node is not joined to the cluster (yet)", p2p.ErrNoLeader)
	}
	return n.call(ctx, routeRecordsPut, "", recordsRequest{Put: put, Del: del}, nil, n.cfg.RequestTimeout)
}

// Records implements p2p.RecordStore.
func (n *Node) Records(ctx context.Context, kind string, node p2p.NodeID) ([]p2p.Record, error) {
	if kind == "" {
		return nil, fmt.Errorf("cluster records: empty kind")
	}
	if !n.joined.Load() {
		return nil, fmt.Errorf("cluster records: %w: this node is not joined to the cluster (yet)", p2p.ErrNoLeader)
	}
	var out []p2p.Record
	err := n.call(ctx, routeRecordsGet, "", recordsRequest{Kind: kind, Node: node}, &out, n.cfg.RequestTimeout)
	return out, err
}

// Leading implements p2p.RecordStore.
func (n *Node) Leading() bool { return n.isLeader() }

// checkRecords validates a put before it is sent or committed.
func checkRecords(put, del []p2p.Record, maxValue int) error {
	for i, r := range put {
		if err := checkRecordName(r); err != nil {
			return fmt.Errorf("put %d: %w", i, err)
		}
		if r.Expires.IsZero() {
			return fmt.Errorf("put %d (%s/%s): %w: no expiry", i, r.Kind, r.Key, errBadRequest)
		}
		if len(r.Value) > maxValue {
			return fmt.Errorf("put %d (%s/%s): %w: value of %d bytes is over the limit of %d", i, r.Kind, r.Key, errBadRequest, len(r.Value), maxValue)
		}
	}
	for i, r := range del {
		if err := checkRecordName(r); err != nil {
			return fmt.Errorf("delete %d: %w", i, err)
		}
	}
	return nil
}

func checkRecordName(r p2p.Record) error {
	if r.Kind == "" || r.Key == "" {
		return fmt.Errorf("%w: a record needs a kind and a key", errBadRequest)
	}
	if len(r.Kind) > maxRecordKey || len(r.Key) > maxRecordKey || len(r.Node) > maxRecordKey {
		return fmt.Errorf("%w: record kind, key and node must be at most %d bytes", errBadRequest, maxRecordKey)
	}
	return nil
}

// serveRecords answers routeRecordsPut (on the leader) and routeRecordsGet
// (on a voter).
func (n *Node) serveRecords(ctx context.Context, rt route, body []byte) (any, error) {
	var req recordsRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if rt == routeRecordsGet {
		if req.Kind == "" {
			return nil, fmt.Errorf("%w: records of no kind", errBadRequest)
		}
		return n.fsm.records(req.Kind, req.Node), nil
	}
	if err := checkRecords(req.Put, req.Del, n.cfg.maxRecordValue()); err != nil {
		return nil, err
	}
	_, err := n.applyLocal(ctx, command{Op: opRecords, Put: req.Put, Del: req.Del, Limit: n.cfg.maxRecordsPerKind()})
	return struct{}{}, err
}

// expireRecords runs on the leader: it commits the deletion of records
// whose expiry passed. The time is in the command, so every voter deletes
// the same records.
func (n *Node) expireRecords(ctx context.Context, now time.Time) {
	if !n.fsm.anyExpired(now) {
		return
	}
	actx, cancel := context.WithTimeout(ctx, n.cfg.RequestTimeout)
	defer cancel()
	if _, err := n.applyLocal(actx, command{Op: opExpireRecords, Now: now}); err != nil && !errors.Is(err, raft.ErrNotLeader) {
		n.log.Warn("expiring records failed", "err", err)
	}
}

// recordSet is the records of one kind, by key.
type recordSet map[string]p2p.Record

// applyRecords runs an opRecords command: deletions first, then puts, all
// or nothing. limit is the leader's per-kind limit, carried in the command
// so that every voter decides alike.
func (s *state) applyRecords(c command) error {
	grow := map[string]int{}
	for _, r := range c.Put {
		if _, ok := s.records[r.Kind][r.Key]; !ok && !containsRecord(c.Del, r) {
			grow[r.Kind]++
		}
	}
	for _, r := range c.Del {
		if _, ok := s.records[r.Kind][r.Key]; ok && !containsRecord(c.Put, r) {
			grow[r.Kind]--
		}
	}
	for kind, g := range grow {
		if have := len(s.records[kind]); c.Limit > 0 && g > 0 && have+g > c.Limit {
			return fmt.Errorf("%w: %d records of kind %q, and %d more would pass the limit of %d", p2p.ErrStateFull, have, kind, g, c.Limit)
		}
	}
	for _, r := range c.Del {
		if set, ok := s.records[r.Kind]; ok {
			delete(set, r.Key)
			if len(set) == 0 {
				delete(s.records, r.Kind)
			}
		}
	}
	for _, r := range c.Put {
		set, ok := s.records[r.Kind]
		if !ok {
			set = recordSet{}
			s.records[r.Kind] = set
		}
		r.Expires = r.Expires.UTC()
		set[r.Key] = r
	}
	return nil
}

// containsRecord reports whether rs names r's kind and key.
func containsRecord(rs []p2p.Record, r p2p.Record) bool {
	return slices.ContainsFunc(rs, func(x p2p.Record) bool { return x.Kind == r.Kind && x.Key == r.Key })
}

// expire deletes the records that expired by now.
func (s *state) expireRecords(now time.Time) {
	for kind, set := range s.records {
		for key, r := range set {
			if !r.Expires.After(now) {
				delete(set, key)
			}
		}
		if len(set) == 0 {
			delete(s.records, kind)
		}
	}
}

// recordList returns the records of kind concerning node (all when node is
// empty), sorted by key.
func (s *state) recordList(kind string, node p2p.NodeID) []p2p.Record {
	out := []p2p.Record{}
	for _, r := range s.records[kind] {
		if node == "" || r.Node == node {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b p2p.Record) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// allRecords is every record sorted by kind and key (snapshots).
func (s *state) allRecords() []p2p.Record {
	kinds := make([]string, 0, len(s.records))
	for k := range s.records {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	var out []p2p.Record
	for _, k := range kinds {
		out = append(out, s.recordList(k, "")...)
	}
	return out
}

func (f *fsm) records(kind string, node p2p.NodeID) []p2p.Record {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.recordList(kind, node)
}

func (f *fsm) anyExpired(now time.Time) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, set := range f.st.records {
		for _, r := range set {
			if !r.Expires.After(now) {
				return true
			}
		}
	}
	return false
}
