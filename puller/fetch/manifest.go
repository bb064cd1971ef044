package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/store"
)

// Manifest returns the manifest dgst from the store, or fetches it (verified,
// at most puller.MaxManifestSize) and stores it. The media type is detected
// from the bytes. Concurrent calls for one digest share one fetch.
func (f *Fetcher) Manifest(ctx context.Context, repo name.Repository, dgst v1.Hash) ([]byte, string, string, error) {
	if b, err := f.readStored(ctx, dgst); err == nil {
		f.metrics.CacheRequests.WithLabelValues("manifest", "hit").Inc()
		return b, puller.DetectMediaType("", b), metrics.SourceCache, nil
	} else if !errors.Is(err, puller.ErrNotFound) {
		return nil, "", "", err
	}
	f.metrics.CacheRequests.WithLabelValues("manifest", "miss").Inc()
	// The fetch is shared, so it must not die with the first caller's
	// context: it runs detached, bounded by ManifestTimeout, and each caller
	// waits for it as long as its own context allows.
	ch := f.manifestGroup.DoChan(dgst.String(), func() (any, error) {
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), f.cfg.ManifestTimeout)
		defer cancel()
		b, mt, err := f.manifests.Manifest(mctx, repo, dgst)
		if err != nil {
			f.metrics.UpstreamErrors.WithLabelValues(puller.ErrorKind(err)).Inc()
			return nil, err
		}
		if err := f.storeManifest(mctx, dgst, b); err != nil && !errors.Is(err, store.ErrExists) {
			f.log.Warn("manifest not cached", "digest", dgst.String(), "err", err)
		}
		return [2]any{b, mt}, nil
	})
	var v any
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, "", "", res.Err // the upstream's error names the manifest
		}
		v = res.Val
	case <-ctx.Done():
		return nil, "", "", fmt.Errorf("manifest %s: %w", dgst, ctx.Err())
	}
	r := v.([2]any)
	return r[0].([]byte), r[1].(string), f.cfg.SourceName, nil
}

func (f *Fetcher) readStored(ctx context.Context, dgst v1.Hash) ([]byte, error) {
	b, err := f.store.Open(ctx, dgst)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	if !b.Complete() {
		return nil, fmt.Errorf("manifest %s is partial: %w", dgst, puller.ErrNotFound)
	}
	if b.Size() > puller.MaxManifestSize {
		return nil, fmt.Errorf("manifest %s is %d bytes: %w", dgst, b.Size(), puller.ErrTooLarge)
	}
	buf := make([]byte, b.Size())
	if _, err := b.ReadAt(buf, 0); err != nil && err != io.EOF {
		return nil, fmt.Errorf("read manifest %s: %w", dgst, err)
	}
	return buf, nil
}

func (f *Fetcher) storeManifest(ctx context.Context, dgst v1.Hash, b []byte) error {
	ing, err := f.store.Ingest(ctx, dgst, int64(len(b)))
	if err != nil {
		return err
	}
	if _, err := io.Copy(ing, bytes.NewReader(b[ing.Offset():])); err != nil {
		ing.Abort(err, true)
		return err
	}
	return ing.Commit(ctx)
}
