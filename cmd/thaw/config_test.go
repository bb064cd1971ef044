package main

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/cobra"
)

// clearThawEnv unsets every THAW_ variable for the test, so that the
// environment the tests run in does not leak into them.
func clearThawEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "THAW_") {
			t.Setenv(k, "") // restored after the test
			os.Unsetenv(k)
		}
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// daemonConfig parses args as `thaw daemon` would and applies env and file.
func daemonConfig(t *testing.T, args []string, file string) (*cobra.Command, map[string]any, error) {
	t.Helper()
	cmd, _, err := newRootCmd().Find([]string{"daemon"})
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatalf("ParseFlags(%v): %v", args, err)
	}
	rest, err := applyConfig(cmd, file)
	return cmd, rest, err
}

func flagString(t *testing.T, cmd *cobra.Command, name string) string {
	t.Helper()
	f := cmd.Flags().Lookup(name)
	if f == nil {
		t.Fatalf("no flag %s", name)
	}
	return f.Value.String()
}

func TestApplyConfigPrecedence(t *testing.T) {
	const file = `
mirror-addr: 0.0.0.0:6000
insecure-registry: [a.example, "b.example:5000"]
tag-ttl: 1m
serve-stale-tags: false
prefetch-concurrency: 7
store-quota: 10GiB
data-dir: /from/file
`
	tests := []struct {
		name         string
		args         []string
		env          map[string]string
		file         string
		wantMirror   string
		wantInsecure []string
		want         map[string]string // other flags
	}{
		{
			name:       "defaults",
			wantMirror: "127.0.0.1:5050",
			want:       map[string]string{"tag-ttl": "30s", "serve-stale-tags": "true", "prefetch-concurrency": "3", "store-quota": "0", "default-registry": "docker.io"},
		},
		{
			name:         "file",
			file:         file,
			wantMirror:   "0.0.0.0:6000",
			wantInsecure: []string{"a.example", "b.example:5000"},
			want:         map[string]string{"tag-ttl": "1m0s", "serve-stale-tags": "false", "prefetch-concurrency": "7", "store-quota": "10737418240", "data-dir": "/from/file"},
		},
		{
			name:         "env over file",
			file:         file,
			env:          map[string]string{"THAW_MIRROR_ADDR": ":7000", "THAW_INSECURE_REGISTRY": "c.example, d.example:443", "THAW_STORE_QUOTA": "1.5GB", "THAW_DATA_DIR": "/from/env"},
			wantMirror:   ":7000",
			wantInsecure: []string{"c.example", "d.example:443"},
			want:         map[string]string{"store-quota": "1500000000", "data-dir": "/from/env", "tag-ttl": "1m0s"},
		},
		{
			name:         "flags over env and file",
			file:         file,
			args:         []string{"--mirror-addr", ":8000", "--insecure-registry", "e.example", "--insecure-registry", "f.example", "--data-dir", "/from/flag", "--tag-ttl", "5s"},
			env:          map[string]string{"THAW_MIRROR_ADDR": ":7000", "THAW_INSECURE_REGISTRY": "c.example", "THAW_TAG_TTL": "2m"},
			wantMirror:   ":8000",
			wantInsecure: []string{"e.example", "f.example"},
			want:         map[string]string{"data-dir": "/from/flag", "tag-ttl": "5s", "prefetch-concurrency": "7"},
		},
		{
			name:         "a list key given as a scalar",
			file:         "insecure-registry: g.example\n",
			wantMirror:   "127.0.0.1:5050",
			wantInsecure: []string{"g.example"},
		},
		{
			name:         "a one-element list from env",
			env:          map[string]string{"THAW_INSECURE_REGISTRY": "h.example"},
			wantMirror:   "127.0.0.1:5050",
			wantInsecure: []string{"h.example"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearThawEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			path := ""
			if tt.file != "" {
				path = writeFile(t, tt.file)
			}
			cmd, rest, err := daemonConfig(t, tt.args, path)
			if err != nil {
				t.Fatalf("applyConfig: %v", err)
			}
			if len(rest) != 0 {
				t.Errorf("leftover keys %v", rest)
			}
			if got := flagString(t, cmd, "mirror-addr"); got != tt.wantMirror {
				t.Errorf("mirror-addr = %q, want %q", got, tt.wantMirror)
			}
			got, err := cmd.Flags().GetStringArray("insecure-registry")
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.wantInsecure) {
				t.Errorf("insecure-registry = %q, want %q", got, tt.wantInsecure)
			}
			for name, want := range tt.want {
				if got := flagString(t, cmd, name); got != want {
					t.Errorf("%s = %q, want %q", name, got, want)
				}
			}
		})
	}
}

func TestApplyConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		file string // content; "-" for a file that does not exist
		env  map[string]string
		want []string // substrings of the error
	}{
		{name: "missing file", file: "-", want: []string{"config file:", "no such file"}},
		{name: "not yaml", file: "mirror-addr: [unclosed\n", want: []string{"config file", "config.yaml"}},
		{name: "bad duration in file", file: "tag-ttl: forever\n", want: []string{"key tag-ttl", "config.yaml"}},
		{name: "bad size in file", file: "store-quota: lots\n", want: []string{"key store-quota", "want a number of bytes"}},
		{name: "bad int from env", env: map[string]string{"THAW_PREFETCH_CONCURRENCY": "many"}, want: []string{"THAW_PREFETCH_CONCURRENCY"}},
		{name: "bad bool from env", env: map[string]string{"THAW_SERVE_STALE_TAGS": "maybe"}, want: []string{"THAW_SERVE_STALE_TAGS"}},
		{name: "every error at once", file: "tag-ttl: x\n", env: map[string]string{"THAW_PREFETCH_CONCURRENCY": "y"}, want: []string{"key tag-ttl", "THAW_PREFETCH_CONCURRENCY", "; "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearThawEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			path := ""
			switch tt.file {
			case "":
			case "-":
				path = filepath.Join(t.TempDir(), "config.yaml")
			default:
				path = writeFile(t, tt.file)
			}
			_, _, err := daemonConfig(t, nil, path)
			if err == nil {
				t.Fatal("applyConfig succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// sigs.k8s.io/yaml reads every number as a float64; an integer of a million
// or more must still reach an int flag as an integer.
func TestApplyConfigFileIntegerOfAMillion(t *testing.T) {
	clearThawEnv(t)
	cmd, _, err := daemonConfig(t, nil, writeFile(t, "prefetch-concurrency: 1000000\n"))
	if err != nil {
		t.Fatalf("applyConfig: %v", err)
	}
	if got := flagString(t, cmd, "prefetch-concurrency"); got != "1000000" {
		t.Fatalf("prefetch-concurrency = %q, want 1000000", got)
	}
}

func TestParseAuths(t *testing.T) {
	clearThawEnv(t)
	path := writeFile(t, `
mirror-addr: 127.0.0.1:0
auths:
  registry.example.com:
    username: robot
    password: secret
  "ghcr.io":
    auth: cm9ib3Q6c2VjcmV0
  quay.io:
    identitytoken: tok
`)
	_, rest, err := daemonConfig(t, nil, path)
	if err != nil {
		t.Fatal(err)
	}
	auths, err := parseAuths(rest)
	if err != nil {
		t.Fatalf("parseAuths: %v", err)
	}
	// authn.AuthConfig's JSON form fills username and password from auth
	// and back; compare what the credentials mean.
	want := map[string]authn.AuthConfig{
		"registry.example.com": {Username: "robot", Password: "secret"},
		"ghcr.io":              {Username: "robot", Password: "secret"},
		"quay.io":              {IdentityToken: "tok"},
	}
	if len(auths) != len(want) {
		t.Fatalf("auths = %+v, want %+v", auths, want)
	}
	for host, w := range want {
		got := auths[host]
		if got.Username != w.Username || got.Password != w.Password || got.IdentityToken != w.IdentityToken {
			t.Errorf("auths[%s] = %+v, want %+v", host, got, w)
		}
	}
}

func TestParseAuthsErrors(t *testing.T) {
	tests := []struct {
		name string
		file string
		want string
	}{
		{"unknown key", "mirror_addr: 127.0.0.1:0\n", `unknown key "mirror_addr"`},
		{"auths not a map", "auths: [a, b]\n", "auths"},
		{"auths entry of the wrong type", "auths:\n  r.example: 5\n", "auths"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearThawEnv(t)
			_, rest, err := daemonConfig(t, nil, writeFile(t, tt.file))
			if err != nil {
				t.Fatalf("applyConfig: %v", err)
			}
			if _, err := parseAuths(rest); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("parseAuths = %v, want an error with %q", err, tt.want)
			}
		})
	}
	// No auths at all is fine.
	if auths, err := parseAuths(map[string]any{}); err != nil || len(auths) != 0 {
		t.Fatalf("parseAuths(empty) = %v, %v", auths, err)
	}
}

// The daemon refuses a config file with an unknown key before it opens
// anything.
func TestDaemonRefusesUnknownConfigKey(t *testing.T) {
	clearThawEnv(t)
	dir := t.TempDir()
	root := newRootCmd()
	root.SetArgs([]string{"daemon", "--data-dir", filepath.Join(dir, "data"), "--config", writeFile(t, "mirror-adr: :5050\n")})
	err := root.Execute()
	if err == nil || !strings.Contains(err.Error(), `unknown key "mirror-adr"`) {
		t.Fatalf("daemon with a typo in its config = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !os.IsNotExist(err) {
		t.Fatalf("the daemon created its data directory before refusing its config (%v)", err)
	}
}

func TestByteSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"512", 512, true},
		{"0", 0, true},
		{"512B", 512, true},
		{"1KB", 1000, true},
		{"1KiB", 1024, true},
		{"1.5GB", 1_500_000_000, true},
		{"10GiB", 10 << 30, true},
		{"2TB", 2e12, true},
		{"1TiB", 1 << 40, true},
		{"100MB", 100e6, true},
		{" 2 MiB ", 2 << 20, true},
		{"1.5KiB", 1536, true},
		{"", 0, false},
		{"abc", 0, false},
		{"GiB", 0, false},
		{"-1", 0, false},
		{"-1GiB", 0, false},
		{"10XB", 0, false},
		{"10gib", 0, false},
		{"1,5GB", 0, false},
		{"NaN", 0, false},
		{"Inf", 0, false},
		{"1e30", 0, false},
		{"9EB", 0, false},
		{"16777216TiB", 0, false}, // 2^64 bytes
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var s byteSize
			err := s.Set(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("Set(%q) = %v (%d), want ok %v", tt.in, err, int64(s), tt.ok)
			}
			if !tt.ok {
				if !strings.Contains(err.Error(), "want a number of bytes") {
					t.Fatalf("Set(%q) error %q does not say what is wanted", tt.in, err)
				}
				return
			}
			if int64(s) != tt.want || s.String() != strconv.FormatInt(tt.want, 10) {
				t.Fatalf("Set(%q) = %d (%s), want %d", tt.in, int64(s), s.String(), tt.want)
			}
		})
	}
	if new(byteSize).Type() != "size" {
		t.Fatal("byteSize.Type")
	}
}

// TestShippedConfigs: the config files deploy/ ships set only flags the
// daemon has, to the values they say.
func TestShippedConfigs(t *testing.T) {
	clearThawEnv(t)
	cmd, rest, err := daemonConfig(t, nil, "../../deploy/systemd/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseAuths(rest); err != nil {
		t.Fatal(err)
	}
	if got := flagString(t, cmd, "containerd-events"); got != "/run/containerd/containerd.sock" {
		t.Errorf("containerd-events = %q", got)
	}
	if got := flagString(t, cmd, "predict"); got != "true" {
		t.Errorf("predict = %q", got)
	}
}
