package store

import (
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func FuzzParseSize(f *testing.F) {
	for _, seed := range []string{"0", "1000", "1000\n", " 7 ", "-1", "", "1e3", "9223372036854775807", "9223372036854775808", "0x10"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		size, err := parseSize(raw)
		if err != nil {
			return
		}
		if size < 0 {
			t.Fatalf("parseSize(%q) = %d, negative", raw, size)
		}
		if back, err := parseSize(strconv.AppendInt(nil, size, 10)); err != nil || back != size {
			t.Fatalf("parseSize does not round-trip %d: %d, %v", size, back, err)
		}
	})
}

func FuzzCheckDigest(f *testing.F) {
	good := strings.Repeat("0f", 32)
	for _, seed := range [][2]string{
		{"sha256", good}, {"sha512", good + good}, {"sha256", strings.ToUpper(good)},
		{"sha256", "../" + good[3:]}, {"", ""}, {"sha256", good[:63] + "/"},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, algorithm, hex string) {
		err := checkDigest(v1.Hash{Algorithm: algorithm, Hex: hex})
		if err != nil {
			return
		}
		// Accepted digests name a file directly under the layout's dirs and
		// are what go-containerregistry parses.
		if algorithm != "sha256" || len(hex) != 64 || strings.ContainsAny(hex, "/\\.") {
			t.Fatalf("checkDigest accepted %s:%s", algorithm, hex)
		}
		if _, err := v1.NewHash(algorithm + ":" + hex); err != nil {
			t.Fatalf("checkDigest accepted %s:%s, which v1.NewHash refuses: %v", algorithm, hex, err)
		}
	})
}
