package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// tlsStream is the raft.StreamLayer under the Raft transport: mutual TLS
// with the cluster CA on both the accepting and the dialling side.
//
// It tracks every connection it hands out and closes them all in Close:
// raft.NetworkTransport.Close stops accepting but leaves inbound connections
// (and their goroutines) to the peers, which would outlive the node.
type tlsStream struct {
	ln     net.Listener // plain TCP; the handshake happens on first use
	server *tls.Config
	client *tls.Config

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

var _ raft.StreamLayer = (*tlsStream)(nil)

func listenStream(addr string, server, client *tls.Config) (*tlsStream, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &tlsStream{ln: ln, server: server, client: client, conns: map[net.Conn]struct{}{}}, nil
}

// Accept implements net.Listener.
func (s *tlsStream) Accept() (net.Conn, error) {
	c, err := s.ln.Accept()
	if err != nil {
		return nil, err
	}
	return s.track(tls.Server(c, s.server))
}

// Dial implements raft.StreamLayer; it completes the handshake within
// timeout so that a peer of another CA fails here, not mid-RPC.
func (s *tlsStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: s.client}
	c, err := d.DialContext(ctx, "tcp", string(addr))
	if err != nil {
		return nil, err
	}
	return s.track(c)
}

// Addr implements net.Listener: the bound address, advertised to peers.
func (s *tlsStream) Addr() net.Addr { return s.ln.Addr() }

// Close implements net.Listener: it stops accepting and closes every
// connection still open.
func (s *tlsStream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	err := s.ln.Close()
	for c := range conns {
		c.Close()
	}
	return err
}

func (s *tlsStream) track(c net.Conn) (net.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return nil, errStreamClosed
	}
	s.conns[c] = struct{}{}
	return &trackedConn{Conn: c, s: s}, nil
}

var errStreamClosed = errors.New("raft stream layer closed")

type trackedConn struct {
	net.Conn
	s    *tlsStream
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c.Conn)
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}
