package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/p2p/certs"
)

// Errors of this package; callers test them with errors.Is. Coordination
// failures the data plane must fall back on wrap p2p.ErrNoLeader or
// p2p.ErrNotMember instead.
var (
	// ErrInvalidConfig is wrapped by every error Config.Validate returns.
	ErrInvalidConfig = errors.New("invalid cluster config")
	// ErrAlreadyRan: Run was called on a Node that already ran or was
	// closed. A Node runs once; make a new one (with the same DataDir) to
	// start again.
	ErrAlreadyRan = errors.New("cluster node already ran or was closed")
)

// Holding is one blob this node holds, complete or in progress, as reported
// by Config.Inventory.
type Holding struct {
	Digest   v1.Hash `json:"digest"`
	Size     int64   `json:"size"`
	Complete bool    `json:"complete"`
}

// Resolver resolves the host of a Join entry. *net.Resolver implements it;
// tests inject their own.
type Resolver interface {
	// LookupHost returns the addresses of host. A name with several
	// addresses, as a Kubernetes headless Service has, names several nodes.
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// Config tunes a Node. Start from DefaultConfig, set NodeID, DataDir and (for
// a multi-node cluster) TLS, RaftAddr, PeerAddr and Join; New rejects a Config
// that does not pass Validate.
type Config struct {
	// NodeID names this node in the cluster; it must be stable across
	// restarts and unique.
	NodeID p2p.NodeID

	// DataDir holds the Raft log, stable store (raft.db) and snapshots
	// (snapshots/). It must survive restarts for a voter to rejoin without
	// being re-added.
	DataDir string

	// RaftAddr is host:port the Raft transport listens on and advertises
	// to the other voters, so its host must be an address they can dial
	// (not 0.0.0.0). Port 0 picks a free port (tests); a voter's address
	// should otherwise stay the same across restarts. Every node listens
	// while it joins: the leader decides at join time whether it becomes a
	// voter, and a node told to be a client closes the listener again.
	RaftAddr string

	// PeerAddr is host:port of this node's peer API as others dial it. The
	// caller runs that mutual-TLS HTTP server and mounts Handler on it.
	PeerAddr string

	// Join lists peer API addresses ("host:port") of existing nodes; any
	// node forwards a join to the leader. A host that resolves to several
	// addresses (a Kubernetes headless Service) means all of them. Empty:
	// this node bootstraps a one-voter cluster, unless it already has Raft
	// state, in which case it rejoins the cluster that state describes.
	Join []string

	// BootstrapExpect, when not 0, lets a node without Raft state that
	// cannot join bootstrap the cluster itself once that many nodes
	// (itself included) answer at the Join addresses, none of them in a
	// cluster yet, and it has the smallest NodeID among them: how a
	// Kubernetes DaemonSet whose pods all join one headless Service forms
	// a cluster. 0: a node with Join addresses never bootstraps.
	BootstrapExpect int

	// Resolver resolves the hosts of Join; nil means net.DefaultResolver.
	Resolver Resolver

	// Voters is how many nodes run Raft; nodes that join once there are
	// this many are clients of the voters. Odd numbers tolerate the most
	// failures for their size (3 tolerate 1, 5 tolerate 2).
	Voters int

	// HeartbeatInterval is how often this node tells the leader it is
	// alive.
	HeartbeatInterval time.Duration

	// ExpireAfter: the leader drops a node not heard from for this long
	// from every blob's holders and seeder roles. The node rejoins, with
	// its Inventory, when its next heartbeat is answered.
	ExpireAfter time.Duration

	// RequestTimeout bounds every read and write (Blob, ClaimSeeder,
	// Announce, Drop, Members, heartbeats), forwarding included: past it
	// they fail with p2p.ErrNoLeader, so a partitioned node falls back to
	// the origin quickly.
	RequestTimeout time.Duration

	// JoinTimeout bounds one join attempt, which may wait for the leader
	// to add this node as a voter and replicate the log to it.
	JoinTimeout time.Duration

	// JoinBackoff is the longest wait between join attempts; attempts
	// start 100ms apart and back off up to it.
	JoinBackoff time.Duration

	// TLS authenticates peers: the Raft transport and every peer API
	// request. nil runs a standalone node: a one-voter cluster whose Raft
	// uses no network (Join must be empty); this is what a single
	// `thaw daemon` without certificates runs.
	TLS *certs.TLS

	// Inventory returns the blobs this node holds. It is announced in one
	// step when the node joins, and again whenever the leader had expired
	// the node. It is called from the node's own goroutine and must be
	// safe for concurrent use with the data plane. nil: nothing held.
	Inventory func() []Holding

	// Logger receives the node's and Raft's logs; nil discards them.
	Logger *slog.Logger

	// Registerer receives the thaw_raft_* and thaw_cluster_* metrics when
	// New succeeds (so one Node per Registerer); nil exports none.
	Registerer prometheus.Registerer

	// Raft timing, see raft.Config. Tests shorten them; production keeps
	// the defaults, which tolerate a busy node without spurious elections.
	RaftHeartbeatTimeout   time.Duration
	RaftElectionTimeout    time.Duration
	RaftLeaderLeaseTimeout time.Duration
	RaftCommitTimeout      time.Duration
	// RaftSnapshotInterval and RaftSnapshotThreshold: how often Raft checks
	// whether to snapshot, and how many new log entries make it do so.
	RaftSnapshotInterval  time.Duration
	RaftSnapshotThreshold uint64

	// MaxRecordsPerKind and MaxRecordValue bound the record store
	// (p2p.RecordStore); zero means DefaultMaxRecordsPerKind and
	// DefaultMaxRecordValue. The leader's limits apply.
	MaxRecordsPerKind int
	MaxRecordValue    int
}

func (c Config) maxRecordsPerKind() int {
	if c.MaxRecordsPerKind > 0 {
		return c.MaxRecordsPerKind
	}
	return DefaultMaxRecordsPerKind
}

func (c Config) maxRecordValue() int {
	if c.MaxRecordValue > 0 {
		return c.MaxRecordValue
	}
	return DefaultMaxRecordValue
}

// DefaultConfig returns the settings a node uses unless told otherwise.
// NodeID and DataDir have no default.
func DefaultConfig() Config {
	rc := raft.DefaultConfig()
	return Config{
		Voters:                 3,
		HeartbeatInterval:      time.Second,
		ExpireAfter:            10 * time.Second,
		RequestTimeout:         2 * time.Second,
		JoinTimeout:            30 * time.Second,
		JoinBackoff:            5 * time.Second,
		RaftHeartbeatTimeout:   rc.HeartbeatTimeout,
		RaftElectionTimeout:    rc.ElectionTimeout,
		RaftLeaderLeaseTimeout: rc.LeaderLeaseTimeout,
		RaftCommitTimeout:      rc.CommitTimeout,
		RaftSnapshotInterval:   rc.SnapshotInterval,
		RaftSnapshotThreshold:  rc.SnapshotThreshold,
	}
}

// standalone: no TLS, so no network; see Config.TLS.
func (c Config) standalone() bool { return c.TLS == nil }

// Validate reports every problem with c, each wrapping ErrInvalidConfig.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...)))
	}
	if c.NodeID == "" {
		bad("NodeID is empty; set a name that is stable across restarts, such as the host name")
	} else if len(c.NodeID) > 253 || strings.ContainsFunc(string(c.NodeID), func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		bad("NodeID %q must be at most 253 characters without spaces or control characters", c.NodeID)
	}
	if c.DataDir == "" {
		bad("DataDir is empty")
	}
	if c.standalone() {
		if len(c.Join) > 0 {
			bad("Join needs TLS: peers authenticate with certificates of the cluster CA (create them with `thaw certs`)")
		}
	} else {
		if c.TLS.Server == nil || c.TLS.Client == nil {
			bad("TLS needs both Server and Client configurations (certs.Load returns them)")
		}
		if err := checkAddr(c.RaftAddr, true); err != nil {
			bad("RaftAddr: %v", err)
		}
		if err := checkAddr(c.PeerAddr, false); err != nil {
			bad("PeerAddr: %v", err)
		}
	}
	for _, j := range c.Join {
		if err := checkAddr(j, false); err != nil {
			bad("Join: %v", err)
		}
	}
	if c.BootstrapExpect < 0 || (c.BootstrapExpect > 0 && len(c.Join) == 0) {
		bad("BootstrapExpect %d needs Join addresses and must not be negative", c.BootstrapExpect)
	}
	if c.Voters < 1 {
		bad("Voters must be at least 1, got %d", c.Voters)
	}
	if c.HeartbeatInterval <= 0 {
		bad("HeartbeatInterval must be positive, got %s", c.HeartbeatInterval)
	}
	if c.ExpireAfter < 2*c.HeartbeatInterval {
		bad("ExpireAfter (%s) must be at least twice HeartbeatInterval (%s), or one late heartbeat expires a node", c.ExpireAfter, c.HeartbeatInterval)
	}
	if c.RequestTimeout <= 0 {
		bad("RequestTimeout must be positive, got %s", c.RequestTimeout)
	}
	if c.JoinTimeout <= 0 {
		bad("JoinTimeout must be positive, got %s", c.JoinTimeout)
	}
	if c.JoinBackoff <= 0 {
		bad("JoinBackoff must be positive, got %s", c.JoinBackoff)
	}
	if err := raft.ValidateConfig(c.raftConfig(nil)); err != nil {
		bad("Raft timing: %v", err)
	}
	return errors.Join(errs...)
}

// raftConfig is the raft.Config c describes; logger may be nil.
func (c Config) raftConfig(logger *slog.Logger) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(c.NodeID)
	if rc.LocalID == "" {
		rc.LocalID = "unset" // reported by Validate's own check
	}
	rc.HeartbeatTimeout = c.RaftHeartbeatTimeout
	rc.ElectionTimeout = c.RaftElectionTimeout
	rc.LeaderLeaseTimeout = c.RaftLeaderLeaseTimeout
	rc.CommitTimeout = c.RaftCommitTimeout
	rc.SnapshotInterval = c.RaftSnapshotInterval
	rc.SnapshotThreshold = c.RaftSnapshotThreshold
	if logger != nil {
		rc.Logger = newHCLogger(logger, "raft")
	}
	return rc
}

// checkAddr checks host:port; an unspecified host (0.0.0.0, ::) is refused
// because others dial the address.
func checkAddr(addr string, portZeroOK bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %v", addr, err)
	}
	if host == "" {
		return fmt.Errorf("%q has no host; others must be able to dial it", addr)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return fmt.Errorf("%q: %s cannot be dialled; give this node's address", addr, host)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return fmt.Errorf("%q: bad port %q", addr, port)
	}
	if p == 0 && !portZeroOK {
		return fmt.Errorf("%q: port 0", addr)
	}
	return nil
}
