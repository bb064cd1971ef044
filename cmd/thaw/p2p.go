package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/p2p/certs"
	"github.com/thaw-dev/thaw/p2p/cluster"
	"github.com/thaw-dev/thaw/p2p/swarm"
	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/store"
)

// peerConfig is the peer network part of `thaw daemon`.
type peerConfig struct {
	NodeID        string
	TLSDir        string // ca.pem, cert.pem, key.pem; empty: <data-dir>/tls if present
	AdvertiseAddr string // host others reach this node at
	PeerAddr      string // listen address of the peer API
	RaftAddr      string // listen address of the Raft transport
	Join          []string
	Voters        int
	// BootstrapExpect: bootstrap once this many nodes answer at Join and
	// none is in a cluster (the smallest node ID does); 0: never.
	BootstrapExpect int
	// Timeout bounds each coordination call; past it a node reads from the
	// origin rather than wait for the cluster.
	Timeout time.Duration
	Swarm   swarm.Config
}

// peerNode is the wired peer network of a daemon.
type peerNode struct {
	cluster *cluster.Node
	swarm   *swarm.Swarm // nil when the node is standalone (no certificates)
	handler http.Handler // the mutual-TLS peer API, nil when standalone
	tls     *certs.TLS
}

// newPeerNode wires the cluster coordinator and, when the node has cluster
// certificates, the data plane. Without certificates the node is a
// standalone one-voter cluster whose blobs come straight from the origin.
func newPeerNode(cfg peerConfig, dataDir string, st *store.Store, origin puller.Source,
	reg prometheus.Registerer, fetched *prometheus.CounterVec, log *slog.Logger) (*peerNode, error) {
	tlsDir := cfg.TLSDir
	if tlsDir == "" {
		if _, err := os.Stat(filepath.Join(dataDir, "tls", "cert.pem")); err == nil {
			tlsDir = filepath.Join(dataDir, "tls")
		}
	}
	if tlsDir == "" && len(cfg.Join) > 0 {
		return nil, errors.New("--join needs cluster certificates: create them with `thaw certs` and pass --tls-dir (or put them in <data-dir>/tls)")
	}
	id := cfg.NodeID
	if id == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("node id: %w (set --node-id)", err)
		}
		id = h
	}
	ccfg := cluster.DefaultConfig()
	ccfg.NodeID = p2p.NodeID(id)
	ccfg.DataDir = filepath.Join(dataDir, "cluster")
	ccfg.Join = cfg.Join
	ccfg.Voters = cfg.Voters
	ccfg.BootstrapExpect = cfg.BootstrapExpect
	if cfg.Timeout > 0 {
		ccfg.RequestTimeout = cfg.Timeout
		cfg.Swarm.CoordTimeout = cfg.Timeout
	}
	ccfg.Logger = log
	ccfg.Registerer = reg
	ccfg.Inventory = inventory(st, log)
	pn := &peerNode{}
	if tlsDir != "" {
		t, err := certs.Load(tlsDir)
		if err != nil {
			return nil, err
		}
		pn.tls = t
		host := cfg.AdvertiseAddr
		if host == "" {
			if host, err = outboundIP(); err != nil {
				return nil, fmt.Errorf("advertise address: %w (set --advertise-addr)", err)
			}
		}
		ccfg.TLS = t
		ccfg.PeerAddr = net.JoinHostPort(host, portOf(cfg.PeerAddr))
		ccfg.RaftAddr = net.JoinHostPort(host, portOf(cfg.RaftAddr))
	}
	c, err := cluster.New(ccfg)
	if err != nil {
		return nil, err
	}
	pn.cluster = c
	if pn.tls == nil {
		return pn, nil
	}
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:     pn.tls.Client,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     time.Minute,
		DialContext:         (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
		ForceAttemptHTTP2:   false,
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
	}}
	sw, err := swarm.New(cfg.Swarm, c, origin, st, client, metrics.NewP2P(reg), fetched, log.With("component", "swarm"))
	if err != nil {
		c.Close()
		return nil, err
	}
	pn.swarm = sw
	mux := http.NewServeMux()
	mux.Handle("/p2p/v1/cluster/", c.Handler())
	mux.Handle("/p2p/v1/blobs/", sw.Handler())
	pn.handler = mux
	return pn, nil
}

// inventory reports the store's blobs to the cluster when the node joins.
func inventory(st *store.Store, log *slog.Logger) func() []cluster.Holding {
	return func() []cluster.Holding {
		infos, err := st.List(context.Background())
		if err != nil {
			log.Warn("listing the store for the cluster", "err", err)
			return nil
		}
		out := make([]cluster.Holding, 0, len(infos))
		for _, i := range infos {
			if i.Complete {
				out = append(out, cluster.Holding{Digest: i.Digest, Size: i.Size, Complete: true})
			}
		}
		return out
	}
}

// peersHandler serves GET /api/v1/peers for `thaw peers` and `thaw status`.
func peersHandler(c *cluster.Node) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		members, err := c.Members(r.Context())
		leader, _ := c.Leader()
		out := peersAnswer{Self: c.Self(), Leader: leader, Members: members}
		if err != nil {
			out.Error = err.Error()
		}
		if d := r.URL.Query().Get("blob"); d != "" {
			h, err := v1.NewHash(d)
			if err != nil {
				http.Error(w, fmt.Sprintf(`{"error":%q}`, err.Error()), http.StatusBadRequest)
				return
			}
			st, err := c.Blob(r.Context(), h)
			if err == nil {
				out.Blob = &st
			} else if out.Error == "" {
				out.Error = err.Error()
			}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(out)
	})
}

// removePeerHandler serves POST /api/v1/peers/remove for `thaw peers
// remove`: the leader takes a node gone for good out of the cluster.
func removePeerHandler(c *cluster.Node) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req removePeerRequest
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil || req.Node == "" {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]string{"error": "want {\"node\": \"ID\"}"})
			return
		}
		if err := c.Remove(r.Context(), req.Node); err != nil {
			w.WriteHeader(http.StatusConflict)
			json.NewEncoder(w).Encode(map[string]string{"error": fmt.Sprintf("remove %s: %v", req.Node, err)})
			return
		}
		json.NewEncoder(w).Encode(req)
	})
}

// removePeerRequest is POST /api/v1/peers/remove.
type removePeerRequest struct {
	Node p2p.NodeID `json:"node"`
}

// peersAnswer is GET /api/v1/peers.
type peersAnswer struct {
	Self    p2p.Member     `json:"self"`
	Leader  p2p.NodeID     `json:"leader"`
	Members []p2p.Member   `json:"members"`
	Blob    *p2p.BlobState `json:"blob,omitempty"`
	Error   string         `json:"error,omitempty"`
}

// outboundIP is the first non-loopback IPv4 address of the host: on a
// typical node, the one its peers reach it at. --advertise-addr overrides it.
func outboundIP() (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if ip, ok := a.(*net.IPNet); ok && !ip.IP.IsLoopback() && ip.IP.To4() != nil {
			return ip.IP.String(), nil
		}
	}
	return "", errors.New("no non-loopback IPv4 address")
}

func portOf(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return port
}
