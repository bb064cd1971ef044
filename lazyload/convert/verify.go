package convert

import (
	"errors"
	"fmt"
	"io"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
)

// Errors of Verify, wrapped with what was wrong where.
var (
	// ErrNotEStargz: the blob has no eStargz footer or TOC that can be
	// read (a plain gzip layer, or one whose TOC was damaged).
	ErrNotEStargz = errors.New("not a readable eStargz layer (footer or TOC missing or corrupt)")
	// ErrTOCDigest: the TOC is readable but is not the one the image's
	// manifest names.
	ErrTOCDigest = errors.New("TOC digest does not match the manifest's annotation")
	// ErrChunkDigest: a chunk of a file does not have the digest the TOC
	// records for it.
	ErrChunkDigest = errors.New("chunk digest does not match the TOC")
)

// Verify checks an eStargz blob the way the stargz snapshotter does before
// it serves a byte: the TOC must have tocDigest (the layer's
// TOCDigestAnnotation) and every chunk of every file the digest the TOC
// records. It reads the whole blob; the snapshotter does the same checks
// chunk by chunk as it fetches them.
func Verify(blob *io.SectionReader, tocDigest string) error {
	want, err := digest.Parse(tocDigest)
	if err != nil {
		return fmt.Errorf("TOC digest annotation %q: %w", tocDigest, err)
	}
	r, err := estargz.Open(blob)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotEStargz, err)
	}
	if r.TOCDigest() != want {
		return fmt.Errorf("%w: TOC is %s, manifest says %s", ErrTOCDigest, r.TOCDigest(), want)
	}
	v, err := r.VerifyTOC(want)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrTOCDigest, err)
	}
	root, ok := r.Lookup("")
	if !ok {
		return fmt.Errorf("%w: no root directory in the TOC", ErrNotEStargz)
	}
	return verifyTree(r, v, root, "")
}

func verifyTree(r *estargz.Reader, v estargz.TOCEntryVerifier, dir *estargz.TOCEntry, prefix string) error {
	var err error
	dir.ForeachChild(func(base string, e *estargz.TOCEntry) bool {
		name := prefix + base
		switch e.Type {
		case "dir":
			err = verifyTree(r, v, e, name+"/")
		case "reg":
			err = verifyFile(r, v, name, e.Size)
		}
		return err == nil
	})
	return err
}

// verifyFile reads each chunk of a file through its verifier.
func verifyFile(r *estargz.Reader, v estargz.TOCEntryVerifier, name string, size int64) error {
	if size == 0 {
		return nil
	}
	f, err := r.OpenFile(name)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	for off := int64(0); off < size; {
		ce, ok := r.ChunkEntryForOffset(name, off)
		if !ok {
			return fmt.Errorf("%s: no chunk at offset %d", name, off)
		}
		cv, err := v.Verifier(ce)
		if err != nil {
			return fmt.Errorf("%s: chunk at %d: %w", name, off, err)
		}
		if _, err := io.Copy(cv, io.NewSectionReader(f, ce.ChunkOffset, ce.ChunkSize)); err != nil {
			return fmt.Errorf("%s: chunk at %d: %w", name, off, err)
		}
		if !cv.Verified() {
			return fmt.Errorf("%w: %s, bytes %d-%d", ErrChunkDigest, name, ce.ChunkOffset, ce.ChunkOffset+ce.ChunkSize-1)
		}
		off = ce.ChunkOffset + ce.ChunkSize
	}
	return nil
}
