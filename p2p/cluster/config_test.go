package cluster

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/thaw-dev/thaw/p2p/certs"
)

func TestConfigValidate(t *testing.T) {
	base := func() Config {
		c := DefaultConfig()
		c.NodeID = "n1"
		c.DataDir = "/tmp/x"
		return c
	}
	withTLS := func(c Config) Config {
		c.TLS = &certs.TLS{Server: fakeTLSConfig(), Client: fakeTLSConfig()}
		c.RaftAddr = "10.0.0.1:7947"
		c.PeerAddr = "10.0.0.1:7946"
		return c
	}
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string // "" for valid
	}{
		{"standalone default", func(c *Config) {}, ""},
		{"cluster", func(c *Config) { *c = withTLS(*c); c.Join = []string{"thaw.svc:7946"} }, ""},
		{"raft port 0", func(c *Config) { *c = withTLS(*c); c.RaftAddr = "127.0.0.1:0" }, ""},
		{"no node id", func(c *Config) { c.NodeID = "" }, "NodeID is empty"},
		{"node id with space", func(c *Config) { c.NodeID = "a b" }, "NodeID"},
		{"no data dir", func(c *Config) { c.DataDir = "" }, "DataDir"},
		{"join without TLS", func(c *Config) { c.Join = []string{"a:1"} }, "Join needs TLS"},
		{"unspecified raft host", func(c *Config) { *c = withTLS(*c); c.RaftAddr = "0.0.0.0:7947" }, "RaftAddr"},
		{"no peer addr", func(c *Config) { *c = withTLS(*c); c.PeerAddr = "" }, "PeerAddr"},
		{"bad join", func(c *Config) { *c = withTLS(*c); c.Join = []string{"nohost"} }, "Join"},
		{"zero voters", func(c *Config) { c.Voters = 0 }, "Voters"},
		{"bootstrap-expect without join", func(c *Config) { *c = withTLS(*c); c.BootstrapExpect = 3 }, "BootstrapExpect 3 needs Join"},
		{"expiry too short", func(c *Config) { c.ExpireAfter = c.HeartbeatInterval }, "ExpireAfter"},
		{"no request timeout", func(c *Config) { c.RequestTimeout = 0 }, "RequestTimeout"},
		{"bad raft timing", func(c *Config) { c.RaftLeaderLeaseTimeout = 10 * time.Second }, "Raft timing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mutate(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate = %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want ErrInvalidConfig mentioning %q", err, tt.want)
			}
		})
	}
	if _, err := New(Config{}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("New(Config{}) = %v", err)
	}
}
