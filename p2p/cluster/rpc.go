package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/hashicorp/raft"

	"github.com/thaw-dev/thaw/p2p"
)

// The coordination API. Every route is JSON over the peer server's mutual
// TLS; a node that cannot serve a request itself forwards it (see
// dispatch), so a caller may send any request to any node.
const (
	// hopsHeader counts how often a request was forwarded. A node forwards
	// only requests that have travelled fewer than maxHops hops: a client
	// to a voter to the leader is the longest path (plus one from a join
	// address that is itself a client), so a stale view cannot loop.
	hopsHeader = "Thaw-Cluster-Hops"
	maxHops    = 3
	maxBody    = 16 << 20 // a join carries the node's inventory
)

// serveAt says which nodes answer a route themselves.
type serveAt int

const (
	atLeader serveAt = iota // writes, joins, heartbeats, liveness
	atVoter                 // reads of replicated state
	atAny                   // every node, joined or not (hello)
)

type route struct {
	name    string
	method  string
	pattern string
	at      serveAt
}

var (
	routeJoin      = route{"join", http.MethodPost, "/p2p/v1/cluster/join", atLeader}
	routeLeave     = route{"leave", http.MethodPost, "/p2p/v1/cluster/leave", atLeader}
	routeHeartbeat = route{"heartbeat", http.MethodPost, "/p2p/v1/cluster/heartbeat", atLeader}
	routeClaim     = route{"claimSeeder", http.MethodPost, "/p2p/v1/cluster/claim", atLeader}
	routeAnnounce  = route{"announce", http.MethodPost, "/p2p/v1/cluster/announce", atLeader}
	routeDrop      = route{"drop", http.MethodPost, "/p2p/v1/cluster/drop", atLeader}
	routeMembers   = route{"members", http.MethodGet, "/p2p/v1/cluster/members", atLeader}
	routeBlob      = route{"blob", http.MethodGet, "/p2p/v1/cluster/blobs/{digest}", atVoter}
	routeRemove    = route{"remove", http.MethodPost, "/p2p/v1/cluster/remove", atLeader}

	routes = []route{routeJoin, routeLeave, routeHeartbeat, routeClaim, routeAnnounce, routeDrop, routeMembers, routeBlob, routeRecordsPut, routeRecordsGet, routeHello, routeRemove}
)

func (rt route) path(arg string) string {
	if rt == routeBlob {
		return "/p2p/v1/cluster/blobs/" + url.PathEscape(arg)
	}
	return rt.pattern
}

// Bodies of the routes.
type (
	joinRequest struct {
		Member memberRecord `json:"member"`
		// CanVote: the node runs Raft and can be added as a voter.
		CanVote  bool      `json:"canVote"`
		Holdings []Holding `json:"holdings,omitempty"`
	}
	joinResponse struct {
		Member memberRecord `json:"member"`
		View   view         `json:"view"`
	}
	nodeRequest struct {
		Node p2p.NodeID `json:"node"`
	}
	heartbeatResponse struct {
		// Known is false when the leader does not know the node, or has
		// expired it: it must join again.
		Known bool `json:"known"`
		View  view `json:"view"`
	}
	blobRequest struct {
		Node     p2p.NodeID `json:"node"`
		Digest   v1.Hash    `json:"digest"`
		Size     int64      `json:"size,omitempty"`
		Complete bool       `json:"complete,omitempty"`
	}
	errorBody struct {
		Error string `json:"error"`
		Code  string `json:"code"`
	}
)

// Internal errors; they cross the wire as error codes.
var (
	errBadRequest  = errors.New("bad cluster request")
	errJoinRefused = errors.New("join refused")
	errUnreachable = errors.New("peer unreachable")
	// errCertificate: the TLS handshake failed on a certificate (a peer of
	// another CA, or one that refused ours). Retrying within a request
	// cannot help, so it is not retriable; the join loop backs off.
	errCertificate = errors.New("peer certificate refused")
	errRemote      = errors.New("peer failed")
)

// Error codes, and what each is on the other side.
var errorCodes = []struct {
	code   string
	status int
	err    error
}{
	{"no_leader", http.StatusServiceUnavailable, p2p.ErrNoLeader},
	{"not_member", http.StatusConflict, p2p.ErrNotMember},
	{"bad_request", http.StatusBadRequest, errBadRequest},
	{"join_refused", http.StatusUnprocessableEntity, errJoinRefused},
	{"state_full", http.StatusInsufficientStorage, p2p.ErrStateFull},
}

// retriable errors may clear up within a request's time: an election, a
// leader change, a peer restarting.
func retriable(err error) bool {
	return errors.Is(err, p2p.ErrNoLeader) || errors.Is(err, errUnreachable)
}

// call sends one request on behalf of this node, serving it locally when it
// can, and retries retriable failures until timeout. in is JSON-encoded;
// out, if not nil, receives the answer. A request that found no leader in
// time fails with an error wrapping p2p.ErrNoLeader.
func (n *Node) call(ctx context.Context, rt route, arg string, in, out any, timeout time.Duration) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("cluster %s: %w", rt.name, err)
		}
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	wait := 20 * time.Millisecond
	for {
		b, err := n.dispatch(cctx, rt, arg, body, 0)
		if err == nil {
			if out == nil {
				return nil
			}
			if err := json.Unmarshal(b, out); err != nil {
				return fmt.Errorf("cluster %s: decode answer: %w", rt.name, err)
			}
			return nil
		}
		if !retriable(err) && cctx.Err() == nil {
			return fmt.Errorf("cluster %s: %w", rt.name, err)
		}
		if errors.Is(ctx.Err(), context.Canceled) {
			return fmt.Errorf("cluster %s: %w", rt.name, ctx.Err())
		}
		t := time.NewTimer(wait)
		select {
		case <-cctx.Done():
			t.Stop()
			if errors.Is(err, p2p.ErrNoLeader) {
				return fmt.Errorf("cluster %s: gave up after %s: %w", rt.name, timeout, err)
			}
			return fmt.Errorf("cluster %s: %w within %s: %v", rt.name, p2p.ErrNoLeader, timeout, err)
		case <-t.C:
		}
		wait = min(2*wait, 250*time.Millisecond)
	}
}

// dispatch serves a request here if this node can, or forwards it: a voter
// to the leader, a client (or a node that has not joined) to the voters it
// knows and to the Join addresses. hops is how far the request came.
func (n *Node) dispatch(ctx context.Context, rt route, arg string, body []byte, hops int) ([]byte, error) {
	if n.canServe(rt) {
		out, err := n.serve(ctx, rt, arg, body)
		if err != nil {
			return nil, err
		}
		return json.Marshal(out)
	}
	if hops >= maxHops {
		return nil, fmt.Errorf("%w: request forwarded %d times without reaching the leader", p2p.ErrNoLeader, hops)
	}
	targets := n.forwardTargets(rt)
	// Only the node a request starts on falls back to the Join addresses,
	// resolved only when needed: for a join, for a heartbeat (a client whose
	// voters all moved finds the cluster again) and when it knows no voter.
	// A node passing a request on has nothing to add to what the sender
	// could try itself.
	fallback := hops == 0 && (len(targets) == 0 || rt == routeJoin || rt == routeHeartbeat)
	if len(targets) == 0 && !fallback {
		return nil, fmt.Errorf("%w: no leader or voter known yet", p2p.ErrNoLeader)
	}
	b, err := n.forward(ctx, targets, !fallback, rt, arg, body, hops)
	if err == nil || !retriable(err) || !fallback || ctx.Err() != nil {
		return b, err
	}
	more := n.resolveJoin(ctx, targets)
	if len(more) == 0 {
		if len(targets) == 0 {
			return nil, fmt.Errorf("%w: no leader or voter known, and no Join address to ask", p2p.ErrNoLeader)
		}
		return nil, err
	}
	return n.forward(ctx, more, true, rt, arg, body, hops)
}

// forward tries targets in order until one answers or fails for a reason
// another target would not change. final: no other targets follow these.
func (n *Node) forward(ctx context.Context, targets []string, final bool, rt route, arg string, body []byte, hops int) ([]byte, error) {
	var last error
	for i, t := range targets {
		// Leave time for the other targets when this one hangs.
		per := remaining(ctx, n.cfg.RequestTimeout)
		if i < len(targets)-1 || !final {
			per /= 2
		}
		actx, cancel := context.WithTimeout(ctx, per)
		b, err := n.post(actx, t, rt, arg, body, hops+1)
		cancel()
		if err == nil {
			return b, nil
		}
		if !retriable(err) && !errors.Is(err, errCertificate) {
			return nil, err
		}
		last = err
		if ctx.Err() != nil {
			break
		}
	}
	if last == nil {
		last = fmt.Errorf("%w: no leader or voter known yet", p2p.ErrNoLeader)
	}
	return nil, last
}

func (n *Node) canServe(rt route) bool {
	if rt.at == atAny {
		return true
	}
	r := n.raft.Load()
	if r == nil {
		return false
	}
	if rt.at == atLeader {
		return r.State() == raft.Leader
	}
	// A voter serves reads while it follows a leader; before its join it
	// may still be catching up, and without a leader it may be partitioned.
	addr, _ := r.LeaderWithID()
	return n.voter.Load() && addr != ""
}

// forwardTargets lists the peer addresses this node knows to forward rt
// to, best first: a voter's leader; else the leader and voters of the last
// view.
func (n *Node) forwardTargets(rt route) []string {
	if n.cfg.standalone() {
		return nil
	}
	var out []string
	add := func(a string) {
		if a != "" && a != n.cfg.PeerAddr && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	if r := n.raft.Load(); r != nil {
		if _, id := r.LeaderWithID(); id != "" {
			if m, ok := n.fsm.member(p2p.NodeID(id)); ok {
				add(m.PeerAddr)
			}
		}
		if n.voter.Load() && len(out) > 0 {
			return out // voters forward to the leader only
		}
	}
	if v := n.view.Load(); v != nil {
		for _, m := range v.Voters {
			if m.ID == v.Leader {
				add(m.PeerAddr)
			}
		}
		for _, m := range v.Voters {
			add(m.PeerAddr)
		}
	}
	return out
}

// resolveJoin expands Config.Join, leaving out this node and the addresses
// in skip: a DNS name stands for every address it resolves to. Names are
// resolved on each use, as the nodes behind a Kubernetes headless Service
// come and go.
func (n *Node) resolveJoin(ctx context.Context, skip []string) []string {
	if n.cfg.standalone() {
		return nil
	}
	var out []string
	add := func(a string) {
		if a != n.cfg.PeerAddr && !slices.Contains(skip, a) && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	for _, j := range n.cfg.Join {
		host, port, err := net.SplitHostPort(j)
		if err != nil {
			continue // Validate refused it
		}
		if net.ParseIP(host) != nil {
			add(j)
			continue
		}
		addrs, err := n.cfg.Resolver.LookupHost(ctx, host)
		if err != nil {
			n.log.Debug("resolving a join address failed", "join", j, "err", err)
			continue
		}
		for _, a := range addrs {
			add(net.JoinHostPort(a, port))
		}
	}
	return out
}

// post sends a request to the peer API at target.
func (n *Node) post(ctx context.Context, target string, rt route, arg string, body []byte, hops int) ([]byte, error) {
	n.outMu.RLock()
	defer n.outMu.RUnlock()
	if n.stopped {
		return nil, fmt.Errorf("%w: this node has stopped", p2p.ErrNoLeader)
	}
	var rd io.Reader
	if rt.method != http.MethodGet {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, rt.method, "https://"+target+rt.path(arg), rd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", target, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(hopsHeader, strconv.Itoa(hops))
	resp, err := n.client.Do(req)
	if err != nil {
		var alert tls.AlertError
		var unknown x509.UnknownAuthorityError
		var invalid x509.CertificateInvalidError
		if errors.As(err, &alert) || errors.As(err, &unknown) || errors.As(err, &invalid) {
			return nil, fmt.Errorf("%s: %w: %v", target, errCertificate, err)
		}
		return nil, fmt.Errorf("%s: %w: %v", target, errUnreachable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %v", target, errUnreachable, err)
	}
	if resp.StatusCode == http.StatusOK {
		return b, nil
	}
	var eb errorBody
	if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
		eb.Error = fmt.Sprintf("HTTP %d: %.200s", resp.StatusCode, b)
	}
	for _, c := range errorCodes {
		if c.code == eb.Code {
			return nil, fmt.Errorf("%s: %w: %s", target, c.err, eb.Error)
		}
	}
	return nil, fmt.Errorf("%s: %w: %s", target, errRemote, eb.Error)
}

// Handler serves the coordination API under /p2p/v1/cluster/. Mount it on
// the peer server, whose TLS configuration must require client
// certificates of the cluster CA (certs.TLS.Server): the handler refuses
// requests without a verified one.
func (n *Node) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range routes {
		mux.Handle(rt.method+" "+rt.pattern, n.handle(rt))
	}
	return mux
}

func (n *Node) handle(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			writeError(w, http.StatusForbidden, "forbidden", "the cluster API needs a client certificate of the cluster CA")
			return
		}
		hops, err := strconv.Atoi(r.Header.Get(hopsHeader))
		if err != nil || hops < 1 {
			hops = 1
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad_request", "read request: "+err.Error())
			return
		}
		timeout := n.cfg.RequestTimeout
		if rt == routeJoin {
			timeout = n.cfg.JoinTimeout
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		out, err := n.dispatch(ctx, rt, r.PathValue("digest"), body, hops)
		if err != nil {
			for _, c := range errorCodes {
				if errors.Is(err, c.err) {
					writeError(w, c.status, c.code, err.Error())
					return
				}
			}
			if retriable(err) {
				writeError(w, http.StatusServiceUnavailable, "no_leader", err.Error())
				return
			}
			n.log.Warn("cluster request failed", "route", rt.name, "err", err)
			writeError(w, http.StatusInternalServerError, "internal", err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(out)
	})
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(errorBody{Error: msg, Code: code})
}

func decode(body []byte, v any) error {
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%w: %v", errBadRequest, err)
	}
	return nil
}
