package swarm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/p2p/memcoord"
	"github.com/thaw-dev/thaw/puller/store"
)

const testPiece = 64 << 10

// forwarder is one node serving a blob whose first piece is still arriving
// (a part), and the address a peer asks it at.
type forwarder struct {
	s    *Swarm
	addr string
	dgst v1.Hash
	l    *local
	pt   *part
	data []byte // the blob's true bytes
}

func newForwarder(t *testing.T) *forwarder {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	st, err := store.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.PieceSize = testPiece
	cfg.StallTimeout = 2 * time.Second
	reg := prometheus.NewRegistry()
	m := metrics.NewPuller(reg)
	addr := strings.TrimPrefix(srv.URL, "https://")
	coord := memcoord.New().Join(p2p.Member{ID: "self", PeerAddr: addr})
	s, err := New(cfg, coord, nil, st, srv.Client(), metrics.NewP2P(reg), m.FetchedBytes, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = s.Handler()
	f := &forwarder{s: s, addr: addr, data: make([]byte, 2*testPiece)}
	rand.Read(f.data)
	f.dgst = v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}
	f.l = newLocal(int64(len(f.data)), testPiece, false, false)
	s.register(f.dgst, f.l)
	f.pt = newPart(testPiece)
	f.l.offerPart(0, f.pt)
	return f
}

// fetchAsync asks the forwarder for piece 0 as a peer does, into dst.
func (f *forwarder) fetchAsync(ctx context.Context, dst *part) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- f.s.getPiece(ctx, f.addr, f.dgst, 0, dst, func() {}, nil) }()
	return errc
}

func waitBytes(t *testing.T, p *part, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.mu.Lock()
		got := p.n
		p.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the asker got %d bytes, want %d", got, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPieceServedWhileArriving: a peer asking for a piece this node is
// still receiving gets its bytes as they come, all but the last until the
// piece is whole here, then the rest.
func TestPieceServedWhileArriving(t *testing.T) {
	f := newForwarder(t)
	f.l.setHash(0, strings.Repeat("ab", 32))
	if b := f.l.snapshot(-1, 0, nil); !has(b.Part, 0) || has(b.Have, 0) || b.Hashes != nil {
		t.Fatalf("bitmap: part %v have %v hashes %q, want piece 0 offered as arriving and no digests from an untrusted node", b.Part, b.Have, b.Hashes)
	}
	half := int64(testPiece / 2)
	f.pt.write(f.data[:half])
	dst := newPart(testPiece)
	errc := f.fetchAsync(t.Context(), dst)
	waitBytes(t, dst, half)

	f.pt.write(f.data[half:testPiece])
	waitBytes(t, dst, testPiece-holdBack)
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-errc:
		t.Fatalf("the piece was complete at the asker before it was verified here (err %v)", err)
	default:
	}
	dst.mu.Lock()
	got := dst.n
	dst.mu.Unlock()
	if got != testPiece-holdBack {
		t.Fatalf("asker has %d bytes before the piece was verified here, want %d", got, testPiece-holdBack)
	}

	f.l.hold(0, f.pt.buf)
	f.pt.finish(true)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst.buf, f.data[:testPiece]) {
		t.Fatal("the asker got other bytes than arrived here")
	}
}

// TestFailedPieceCutsTheStream: when a piece this node was passing on turns
// out bad here (or its source breaks), the askers' transfers are cut short:
// they see a broken transfer, not a piece with a wrong digest, so they do
// not blame this node.
func TestFailedPieceCutsTheStream(t *testing.T) {
	f := newForwarder(t)
	f.pt.write(f.data[:testPiece-1]) // all but the last byte arrived
	dst := newPart(testPiece)
	errc := f.fetchAsync(t.Context(), dst)
	waitBytes(t, dst, testPiece-1)
	f.l.dropPart(0, f.pt)
	f.pt.finish(false)
	err := <-errc
	if err == nil {
		t.Fatal("a transfer of a piece that failed here completed")
	}
	if errors.Is(err, errBadPiece) || errors.Is(err, errBusy) || errors.Is(err, errStalled) {
		t.Fatalf("err = %v, want a broken transfer", err)
	}
	if b := f.l.snapshot(-1, 0, nil); has(b.Part, 0) {
		t.Fatal("a failed part is still offered")
	}
}

// TestStreamedPieceVerified: a piece taken while it arrived is checked
// against its digest once it is whole, waiting for the digest if it came
// first; a wrong byte is a bad piece (its sender is avoided), a missing
// digest an ordinary failure.
func TestStreamedPieceVerified(t *testing.T) {
	f := newForwarder(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	d := &downloader{s: f.s, l: f.l, ctx: ctx, dgst: f.dgst}
	piece := f.data[:testPiece]
	sum := sha256.Sum256(piece)

	go func() {
		time.Sleep(50 * time.Millisecond)
		f.l.setHash(0, hex.EncodeToString(sum[:])) // the digest comes after the bytes
	}()
	if err := d.verify(ctx, 0, piece, "peer"); err != nil {
		t.Fatalf("right bytes: %v", err)
	}
	bad := bytes.Clone(piece)
	bad[1234] ^= 1
	if err := d.verify(ctx, 0, bad, "peer"); !errors.Is(err, errBadPiece) {
		t.Fatalf("a wrong byte: err = %v, want %v", err, errBadPiece)
	}
	f.s.cfg.StallTimeout = 50 * time.Millisecond
	if err := d.verify(ctx, 1, f.data[testPiece:], "peer"); err == nil || errors.Is(err, errBadPiece) {
		t.Fatalf("no digest: err = %v, want a failure that is not a bad piece", err)
	}
}

// TestEndgameAsksAWholeHolder: once every missing piece is being fetched,
// a piece coming from a peer that has it only arriving is asked again of a
// peer that has it whole; before that, nothing is asked twice.
func TestEndgameAsksAWholeHolder(t *testing.T) {
	f := newForwarder(t)
	l := newLocal(4*testPiece, testPiece, false, false)
	d := &downloader{s: f.s, l: l, peers: map[p2p.NodeID]*peerState{}, inflight: map[int][]*attempt{}, streamAt: -1}
	bits := func(pieces ...int) []byte {
		b := make([]byte, 1)
		for _, i := range pieces {
			b[0] |= 1 << i
		}
		return b
	}
	forwarding := &peerState{id: "forwarding", part: bits(2, 3), have: bits(0, 1), busy: map[int]time.Time{}}
	whole := &peerState{id: "whole", have: bits(0, 1, 2), busy: map[int]time.Time{}}
	d.peers[forwarding.id], d.peers[whole.id] = forwarding, whole
	l.have[0], l.have[1] = true, true
	d.next = 2
	start := func(i int, p *peerState) {
		d.inflight[i] = append(d.inflight[i], &attempt{peer: p, start: time.Now(), cancel: func() {}})
		p.inflight++
	}
	start(2, forwarding)
	// Piece 3 is missing and not asked for yet: the normal pick takes it.
	if i, p, dup := d.pickLocked(time.Now()); i != 3 || p != forwarding || dup {
		t.Fatalf("pick = %d from %v (dup %v), want piece 3 from the forwarding peer", i, p, dup)
	}
	start(3, forwarding)
	// Every missing piece is in flight: piece 2 is asked of the whole holder.
	i, p, dup := d.pickLocked(time.Now())
	if i != 2 || p != whole || !dup {
		t.Fatalf("endgame pick = %d from %v (dup %v), want piece 2 from the whole holder", i, p, dup)
	}
	start(2, whole)
	// Nobody has piece 3 whole: nothing more to ask.
	if _, p, _ := d.pickLocked(time.Now()); p != nil {
		t.Fatalf("picked %s again", p.id)
	}
}

// TestSeederHidesPiecesItSentOut: once the seeder sent a piece to as many
// peers as it sends it to, its bitmap stops offering it, so peers ask those
// peers, until the grace period passes.
func TestSeederHidesPiecesItSentOut(t *testing.T) {
	l := newLocal(2*testPiece, testPiece, true, true)
	l.ration(1, 50*time.Millisecond)
	l.complete(0, strings.Repeat("ab", 32))
	if b := l.snapshot(-1, 0, nil); !has(b.Have, 0) {
		t.Fatal("the seeder does not offer a piece it has")
	}
	if !l.allow(0, 2, time.Now()) {
		t.Fatal("the seeder refused the first copy")
	}
	l.done(0)
	if l.allow(0, 2, time.Now()) {
		t.Fatal("the seeder allowed a second copy")
	}
	if b := l.snapshot(-1, 0, nil); has(b.Have, 0) || len(b.Hashes) != 2 || b.Hashes[0] == "" {
		t.Fatalf("after its copy: have %v hashes %q, want piece 0 hidden and its digest still published", b.Have, b.Hashes)
	}
	time.Sleep(60 * time.Millisecond)
	if b := l.snapshot(-1, 0, nil); !has(b.Have, 0) {
		t.Fatal("the piece is not offered again after the grace period")
	}
}

// TestUnseenChangesWakeNoWatcher: a digest learned by an untrusted node, or
// a piece moved from memory to the store, changes nothing its watchers see,
// so it makes no new bitmap version (sixteen nodes watching each other
// would otherwise trade bitmaps for nothing); the node's own waiters still
// wake.
func TestUnseenChangesWakeNoWatcher(t *testing.T) {
	l := newLocal(2*testPiece, testPiece, false, false)
	v := l.snapshot(-1, 0, nil).Version
	got := make(chan string, 1)
	go func() { got <- l.waitHash(0, t.Context().Done()) }()
	h := strings.Repeat("ab", 32)
	l.setHash(0, h)
	if w := <-got; w != h {
		t.Fatalf("waitHash returned %q, want the digest just learned", w)
	}
	if b := l.snapshot(-1, 0, nil); b.Version != v {
		t.Fatalf("an untrusted node's digest moved the bitmap from version %d to %d", v, b.Version)
	}
	l.hold(0, make([]byte, testPiece))
	v = l.snapshot(-1, 0, nil).Version
	l.complete(0, h) // the reader took piece 0 into the store: still served
	if b := l.snapshot(-1, 0, nil); b.Version != v || !has(b.Have, 0) {
		t.Fatalf("storing a held piece: version %d -> %d, have %v; want no new version", v, b.Version, b.Have)
	}
	l.complete(1, h) // a piece new to peers
	if b := l.snapshot(-1, 0, nil); b.Version == v || !has(b.Have, 1) {
		t.Fatalf("a new piece: version stayed %d, have %v", b.Version, b.Have)
	}

	trusted := newLocal(2*testPiece, testPiece, true, false)
	v = trusted.snapshot(-1, 0, nil).Version
	trusted.setHash(0, h)
	if b := trusted.snapshot(-1, 0, nil); b.Version == v || len(b.Hashes) == 0 || b.Hashes[0] != h {
		t.Fatalf("a trusted node's new digest: version %d -> %d, hashes %q; want a new version carrying it", v, b.Version, b.Hashes)
	}
}

// TestNearlyDoneFreesTheSlot: getPiece reports a piece nearly in once the
// last nearlyDone percent of it is all that is left to come, and only once.
func TestNearlyDoneFreesTheSlot(t *testing.T) {
	f := newForwarder(t)
	dst := newPart(testPiece)
	var calls atomic.Int32
	errc := make(chan error, 1)
	go func() {
		errc <- f.s.getPiece(t.Context(), f.addr, f.dgst, 0, dst, func() {}, func() { calls.Add(1) })
	}()
	before := int64(testPiece) * (100 - nearlyDone) / 100
	f.pt.write(f.data[:before-1024])
	waitBytes(t, dst, before-1024)
	time.Sleep(50 * time.Millisecond)
	if n := calls.Load(); n != 0 {
		t.Fatalf("nearly called %d times with %d of %d bytes in", n, before-1024, testPiece)
	}
	f.pt.write(f.data[before-1024 : testPiece])
	f.pt.finish(true)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("nearly called %d times for one piece, want 1", n)
	}
}
