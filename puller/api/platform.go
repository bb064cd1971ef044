package api

import (
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// prefetchPlatform parses os/arch[/variant], refusing the empty parts that
// v1.ParsePlatform lets through.
func prefetchPlatform(s string) (*v1.Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return nil, fmt.Errorf("want os/arch[/variant]")
	}
	return v1.ParsePlatform(s)
}
