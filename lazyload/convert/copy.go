package convert

import (
	"context"
	"fmt"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Copy reads the image src from its registry, converts it (Image) and
// pushes the result as dst. With insecure, both registries are reached over
// plain HTTP. remoteOpts (authentication, platform, transport) apply to both.
func Copy(ctx context.Context, src, dst string, insecure bool, o Options, remoteOpts ...remote.Option) (Report, error) {
	start := time.Now()
	var nameOpts []name.Option
	if insecure {
		nameOpts = append(nameOpts, name.Insecure)
	}
	srcRef, err := name.ParseReference(src, nameOpts...)
	if err != nil {
		return Report{}, fmt.Errorf("source %q: %w", src, err)
	}
	dstRef, err := name.ParseReference(dst, nameOpts...)
	if err != nil {
		return Report{}, fmt.Errorf("destination %q: %w", dst, err)
	}
	remoteOpts = append(remoteOpts, remote.WithContext(ctx))
	img, err := remote.Image(srcRef, remoteOpts...)
	if err != nil {
		return Report{}, fmt.Errorf("read %s: %w", srcRef, err)
	}
	out, rep, cleanup, err := Image(ctx, img, o)
	if err != nil {
		return Report{}, fmt.Errorf("convert %s: %w", srcRef, err)
	}
	defer cleanup()
	if err := remote.Write(dstRef, out, remoteOpts...); err != nil {
		return Report{}, fmt.Errorf("push %s: %w", dstRef, err)
	}
	rep.Duration = time.Since(start)
	return rep, nil
}
