package swarm

import (
	"sync"
	"time"
)

// local is a blob this node is bringing in, seeding it from the origin or
// downloading it from peers: what it can serve, the piece digests it knows,
// and the pieces it holds in memory until its reader takes them. Peers read
// it through the server's bitmap and piece endpoints.
type local struct {
	size, pieceSize int64
	n               int
	// trusted: the digests are first-hand, computed from the origin's bytes
	// as they passed (the seeder) or from a verified complete blob.
	trusted bool
	// seeding: this node is the seeder of the blob in flight; it sends each
	// piece to only a few peers (see Config.SeedCopies).
	seeding bool

	mu      sync.Mutex
	hashes  []string       // hex sha256 per piece, "" while unknown
	have    []bool         // pieces this node can serve
	mem     map[int][]byte // verified pieces the reader has not taken yet
	parts   map[int]*part  // pieces arriving now, streamed to peers as they come
	version int            // bumped on every change
	changed chan struct{}  // closed and replaced on every change
	sending []int          // uploads of each piece running now
	served  []int          // seeder: copies of each piece sent to peers
	lastAt  []time.Time    // seeder: when the last copy was allowed
	copies  int            // seeder: copies of a piece it sends (Config.SeedCopies)
	grace   time.Duration  // seeder: after this, a piece is offered again
	// announced is closed once the cluster has been told this node brings
	// the blob in (see Swarm.announce); never closed if it was not told.
	announced chan struct{}
}

func newLocal(size, pieceSize int64, trusted, seeding bool) *local {
	n := int((size + pieceSize - 1) / pieceSize)
	return &local{
		size: size, pieceSize: pieceSize, n: n, trusted: trusted, seeding: seeding,
		hashes: make([]string, n), have: make([]bool, n), mem: map[int][]byte{}, parts: map[int]*part{},
		changed: make(chan struct{}), announced: make(chan struct{}), served: make([]int, n), lastAt: make([]time.Time, n), sending: make([]int, n),
	}
}

// pieceLen is the length of piece i (the last one may be short).
func (l *local) pieceLen(i int) int64 {
	if i == l.n-1 {
		return l.size - int64(i)*l.pieceSize
	}
	return l.pieceSize
}

// bumpLocked records a change peers see and wakes the bitmap long-polls.
func (l *local) bumpLocked() {
	l.version++
	l.notifyLocked()
}

// notifyLocked wakes this node's own waiters (a digest or a piece it waits
// for) without a new bitmap version: peers are not woken for a change they
// cannot see.
func (l *local) notifyLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// setHash records the digest of piece i unless one is known already.
// It reports whether the known digest (if any) agrees.
func (l *local) setHash(i int, h string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.hashes[i] == "" {
		l.hashes[i] = h
		if l.trusted {
			l.bumpLocked() // peers take digests from this node
		} else {
			l.notifyLocked()
		}
		return true
	}
	return l.hashes[i] == h
}

// hash returns the digest of piece i, "" if unknown.
func (l *local) hash(i int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.hashes[i]
}

// complete marks piece i servable (from the store), with its digest.
func (l *local) complete(i int, h string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := !l.have[i] || l.parts[i] != nil || (l.trusted && h != "" && l.hashes[i] == "")
	if h != "" && l.hashes[i] == "" {
		l.hashes[i] = h
	}
	l.have[i] = true
	delete(l.parts, i)
	if seen {
		l.bumpLocked()
	} else {
		l.notifyLocked()
	}
}

// offerPart offers piece i to peers while it arrives in p.
//
// A download offers its part only once its source answered: a part is then
// always offered after the part (or whole piece) it streams from, so parts
// streaming from each other never form a cycle that would wait forever.
func (l *local) offerPart(i int, p *part) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.parts[i] = p
	l.bumpLocked()
}

// dropPart forgets piece i's arrival p, which failed.
func (l *local) dropPart(i int, p *part) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.parts[i] == p {
		delete(l.parts, i)
		l.bumpLocked()
	}
}

// waitHash returns the digest of piece i, waiting for it (a piece streamed
// from the seeder while it arrived there gets its digest when whole) until
// stop is closed; "" if it did not come.
func (l *local) waitHash(i int, stop <-chan struct{}) string {
	for {
		l.mu.Lock()
		h, ch := l.hashes[i], l.changed
		l.mu.Unlock()
		if h != "" {
			return h
		}
		select {
		case <-ch:
		case <-stop:
			return ""
		}
	}
}

// hold keeps verified piece i in memory for the reader and for peers.
func (l *local) hold(i int, data []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mem[i] = data
	l.have[i] = true
	delete(l.parts, i)
	l.bumpLocked()
}

// take waits for piece i in memory and removes it; the bytes go to the
// store through the reader, which serves them to peers from then on.
func (l *local) take(i int, stop <-chan struct{}) ([]byte, bool) {
	for {
		l.mu.Lock()
		if data, ok := l.mem[i]; ok {
			delete(l.mem, i)
			l.mu.Unlock()
			return data, true
		}
		ch := l.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-stop:
			return nil, false
		}
	}
}

// memPiece returns piece i if it is held in memory.
func (l *local) memPiece(i int) ([]byte, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	data, ok := l.mem[i]
	return data, ok
}

// bitmap is the state peers see: which pieces this node serves, whole or
// while they arrive, and (a trusted node only) the digests it knows from
// index from on.
type bitmap struct {
	Size      int64    `json:"size"`
	PieceSize int64    `json:"pieceSize"`
	Version   int      `json:"version"`
	Have      []byte   `json:"have"`           // bit i set: piece i is served
	Part      []byte   `json:"part,omitempty"` // bit i set: piece i is arriving and served as it comes
	Trusted   bool     `json:"trusted"`
	HashFrom  int      `json:"hashFrom"`
	Hashes    []string `json:"hashes"`
}

// snapshot returns the bitmap, waiting up to wait for a version newer than
// after (a long poll); hashFrom skips digests the asker knows.
func (l *local) snapshot(after, hashFrom int, wait <-chan struct{}) bitmap {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.version <= after {
		ch := l.changed
		l.mu.Unlock()
		select {
		case <-ch:
			l.mu.Lock()
		case <-wait:
			l.mu.Lock()
			return l.snapshotLocked(hashFrom)
		}
	}
	return l.snapshotLocked(hashFrom)
}

func (l *local) snapshotLocked(hashFrom int) bitmap {
	b := bitmap{Size: l.size, PieceSize: l.pieceSize, Version: l.version, Trusted: l.trusted, Have: make([]byte, (l.n+7)/8)}
	now := time.Now()
	for i, ok := range l.have {
		if l.rationedLocked(i, now) {
			continue // the seeder sent it out already: ask those peers
		}
		if ok {
			b.Have[i/8] |= 1 << (i % 8)
		} else if l.parts[i] != nil {
			if b.Part == nil {
				b.Part = make([]byte, (l.n+7)/8)
			}
			b.Part[i/8] |= 1 << (i % 8)
		}
	}
	hashFrom = min(max(hashFrom, 0), l.n)
	b.HashFrom = hashFrom
	if l.trusted {
		// Peers take digests only from a trusted node.
		b.Hashes = append([]string(nil), l.hashes[hashFrom:]...)
	}
	return b
}

// rationedLocked reports whether the seeder has sent piece i to as many
// peers as it sends it to, lately.
func (l *local) rationedLocked(i int, now time.Time) bool {
	return l.seeding && l.copies > 0 && l.served[i] >= l.copies && now.Sub(l.lastAt[i]) < l.grace
}

// ration sets how many copies of each piece the seeder sends, and after how
// long without one it offers the piece again (the peers that got it may be
// gone).
func (l *local) ration(copies int, grace time.Duration) {
	l.mu.Lock()
	l.copies, l.grace = copies, grace
	l.mu.Unlock()
}

// allow reports whether this node should send piece i to one more peer now,
// and if so counts the upload (release it with done): at most uploads at a
// time, and the seeder at most its copies in all (see ration).
func (l *local) allow(i, uploads int, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sending[i] >= uploads {
		return false
	}
	if l.seeding && l.rationedLocked(i, now) {
		return false
	}
	l.countLocked(i, now)
	return true
}

// countLocked counts an upload of piece i starting now: one more running,
// and at the seeder one more of its copies (at the last one, peers stop
// asking this node for the piece).
func (l *local) countLocked(i int, now time.Time) {
	if l.seeding {
		l.served[i]++
		l.lastAt[i] = now
		if l.rationedLocked(i, now) {
			l.bumpLocked()
		}
	}
	l.sending[i]++
}

// awaitPiece waits until this node can serve piece i, whole or arriving,
// and counts an upload of it (release it with done); the seeder counts it
// as one of its copies, so peers take the piece from the stream's receiver
// rather than all from the seeder. It returns the piece's part while it
// arrives (nil once whole), and false if stop closed first.
func (l *local) awaitPiece(i int, stop <-chan struct{}) (*part, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for !l.have[i] && l.parts[i] == nil {
		ch := l.changed
		l.mu.Unlock()
		select {
		case <-ch:
			l.mu.Lock()
		case <-stop:
			l.mu.Lock()
			return nil, false
		}
	}
	l.countLocked(i, time.Now())
	if l.have[i] {
		return nil, true
	}
	return l.parts[i], true
}

// done ends an upload counted by allow.
func (l *local) done(i int) {
	l.mu.Lock()
	l.sending[i]--
	l.mu.Unlock()
}

// has reports whether bit i is set in a bitmap's Have.
func has(have []byte, i int) bool {
	return i/8 < len(have) && have[i/8]&(1<<(i%8)) != 0
}

// committed turns the blob into a complete one: every piece served from the
// store. It reports whether every digest is known
// (so the piece digests can be cached for later peers).
func (l *local) committed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	// A seeder keeps rationing its copies (for the grace period after each):
	// the peers still downloading are better served by each other than by
	// all asking the one node that had the blob first.
	l.mem = map[int][]byte{}
	l.parts = map[int]*part{}
	all := true
	for i := range l.have {
		l.have[i] = true
		all = all && l.hashes[i] != ""
	}
	l.trusted = all
	l.bumpLocked()
	return all
}

// learnHashes takes the piece digests of a peer's bitmap, which come off the
// network: only from a trusted peer (seeder or complete holder), only
// continuing from hashFrom (the first digest not known from this peer), only
// well-formed ones and only for pieces the blob has. It returns the new
// hashFrom and the pieces whose digest disagrees with one known already.
func (l *local) learnHashes(b bitmap, hashFrom int) (int, []int) {
	if !b.Trusted || b.HashFrom != hashFrom {
		return hashFrom, nil
	}
	var conflicts []int
	for k, h := range b.Hashes {
		i := b.HashFrom + k
		if i < 0 || i >= l.n || !validHex(h) {
			break
		}
		if !l.setHash(i, h) {
			conflicts = append(conflicts, i)
		}
		hashFrom = i + 1
	}
	return hashFrom, conflicts
}

// validHex reports whether h is a hex sha256 digest.
func validHex(h string) bool {
	if len(h) != 64 {
		return false
	}
	for _, c := range h {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
