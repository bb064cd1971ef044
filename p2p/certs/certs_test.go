package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newCA makes a CA in a fresh directory and returns it.
func newCA(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := InitCA(dir); err != nil {
		t.Fatalf("InitCA: %v", err)
	}
	return dir
}

func newNode(t *testing.T, caDir, name string, hosts ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := Issue(caDir, dir, name, hosts); err != nil {
		t.Fatalf("Issue %s: %v", name, err)
	}
	return dir
}

func load(t *testing.T, dir string) *TLS {
	t.Helper()
	c, err := Load(dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return c
}

func TestInitCA(t *testing.T) {
	dir := newCA(t)
	info, err := os.Stat(filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Errorf("ca-key.pem mode = %o, want 600", perm)
	}
	b, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := parseCert(CAFile, b)
	if err != nil {
		t.Fatal(err)
	}
	if !ca.IsCA {
		t.Error("ca.pem is not a CA")
	}
	if got := ca.NotAfter.Sub(ca.NotBefore); got < CAValidity {
		t.Errorf("CA validity = %s, want at least %s", got, CAValidity)
	}
	if err := InitCA(dir); !errors.Is(err, ErrExist) {
		t.Errorf("second InitCA = %v, want ErrExist", err)
	}
}

func TestIssue(t *testing.T) {
	caDir := newCA(t)
	dir := newNode(t, caDir, "node-a", "10.0.0.7", "node-a.thaw.svc", "::1")
	for _, f := range []string{CAFile, CertFile, KeyFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	info, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Errorf("key.pem mode = %o, want 600", perm)
	}
	b, _ := os.ReadFile(filepath.Join(dir, CertFile))
	leaf, err := parseCert(CertFile, b)
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != "node-a" {
		t.Errorf("CN = %q", leaf.Subject.CommonName)
	}
	if len(leaf.IPAddresses) != 2 || !leaf.IPAddresses[0].Equal(net.ParseIP("10.0.0.7")) {
		t.Errorf("IP SANs = %v", leaf.IPAddresses)
	}
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "node-a.thaw.svc" {
		t.Errorf("DNS SANs = %v", leaf.DNSNames)
	}
	hasEKU := map[x509.ExtKeyUsage]bool{}
	for _, u := range leaf.ExtKeyUsage {
		hasEKU[u] = true
	}
	if !hasEKU[x509.ExtKeyUsageServerAuth] || !hasEKU[x509.ExtKeyUsageClientAuth] {
		t.Errorf("ExtKeyUsage = %v, want server and client auth", leaf.ExtKeyUsage)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got < NodeValidity || got > NodeValidity+time.Hour {
		t.Errorf("validity = %s, want about %s", got, NodeValidity)
	}
	if c := load(t, dir); c.NodeName != "node-a" {
		t.Errorf("NodeName = %q", c.NodeName)
	}

	if err := Issue(caDir, dir, "node-a", nil); !errors.Is(err, ErrExist) {
		t.Errorf("Issue over existing files = %v, want ErrExist", err)
	}
	// A node directory already holding another CA's ca.pem is not silently
	// switched to this CA.
	other := newNode(t, newCA(t), "node-b")
	os.Remove(filepath.Join(other, CertFile))
	os.Remove(filepath.Join(other, KeyFile))
	if err := Issue(caDir, other, "node-b", nil); !errors.Is(err, ErrExist) {
		t.Errorf("Issue into a directory of another CA = %v, want ErrExist", err)
	}
	if err := Issue(caDir, t.TempDir(), " ", nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("Issue with empty name = %v, want ErrInvalid", err)
	}
	if err := Issue(t.TempDir(), t.TempDir(), "x", nil); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), CAFile) {
		t.Errorf("Issue without a CA = %v, want ErrInvalid naming ca.pem", err)
	}
}

func TestLoadErrors(t *testing.T) {
	caDir := newCA(t)
	good := newNode(t, caDir, "good")
	other := newNode(t, caDir, "other")
	foreign := newNode(t, newCA(t), "foreign")

	copyDir := func(t *testing.T, from string, replace map[string]string) string {
		t.Helper()
		dir := t.TempDir()
		for _, f := range []string{CAFile, CertFile, KeyFile} {
			src := filepath.Join(from, f)
			if r, ok := replace[f]; ok {
				if r == "" {
					continue
				}
				src = r
			}
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	garbage := filepath.Join(t.TempDir(), "garbage")
	os.WriteFile(garbage, []byte("not pem"), 0o600)

	tests := []struct {
		name    string
		replace map[string]string
		want    string // the file the error must name
	}{
		{"missing ca", map[string]string{CAFile: ""}, CAFile},
		{"missing cert", map[string]string{CertFile: ""}, CertFile},
		{"missing key", map[string]string{KeyFile: ""}, KeyFile},
		{"garbage ca", map[string]string{CAFile: garbage}, CAFile},
		{"garbage cert", map[string]string{CertFile: garbage}, CertFile},
		{"key of another node", map[string]string{KeyFile: filepath.Join(other, KeyFile)}, KeyFile},
		{"leaf not a CA", map[string]string{CAFile: filepath.Join(other, CertFile)}, CAFile},
		{"cert of another CA", map[string]string{CertFile: filepath.Join(foreign, CertFile), KeyFile: filepath.Join(foreign, KeyFile)}, CertFile},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(copyDir(t, good, tt.replace))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Load = %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not name %s", err, tt.want)
			}
		})
	}
}

func TestLoadRefusesExpired(t *testing.T) {
	caDir := newCA(t)
	dir := filepath.Join(t.TempDir(), "old")
	now := time.Now()
	if err := issue(caDir, dir, "old", nil, now.Add(-48*time.Hour), now.Add(-24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	_, err := Load(dir)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("Load of an expired certificate = %v, want ErrInvalid saying expired", err)
	}
}

// handshake runs one TLS handshake between server and client over loopback
// and returns each side's error.
func handshake(t *testing.T, server, client *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 1)
		if err = c.(*tls.Conn).Handshake(); err == nil {
			if _, err = c.Read(b); err == nil {
				_, err = c.Write(b)
			}
		}
		done <- err
	}()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), client)
	if err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		// Under TLS 1.3 the client learns the server refused its
		// certificate only on its first read.
		if _, err = c.Write([]byte{1}); err == nil {
			_, err = c.Read(make([]byte, 1))
		}
		c.Close()
	}
	serverErr = <-done
	return serverErr, err
}

func TestMutualTLS(t *testing.T) {
	caDir := newCA(t)
	// The certificate names neither 127.0.0.1 nor localhost: membership is
	// by CA, not by address.
	a := load(t, newNode(t, caDir, "a", "a.example"))
	b := load(t, newNode(t, caDir, "b", "b.example"))
	// mallory trusts the cluster CA but holds a certificate of another CA,
	// so each refusal below comes from the honest side.
	foreign := loadUnchecked(t, newNode(t, newCA(t), "mallory", "127.0.0.1"), filepath.Join(caDir, CAFile))

	expiredDir := filepath.Join(t.TempDir(), "expired")
	now := time.Now()
	if err := issue(caDir, expiredDir, "expired", []string{"127.0.0.1"}, now.Add(-48*time.Hour), now.Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	expired := loadUnchecked(t, expiredDir, filepath.Join(caDir, CAFile))

	if a.Server.MinVersion != tls.VersionTLS13 || a.Client.MinVersion != tls.VersionTLS13 {
		t.Error("MinVersion is not TLS 1.3")
	}

	t.Run("same CA", func(t *testing.T) {
		serverErr, clientErr := handshake(t, a.Server, b.Client)
		if clientErr != nil {
			t.Errorf("client: %v", clientErr)
		}
		if serverErr != nil {
			t.Errorf("server: %v", serverErr)
		}
	})
	refused := []struct {
		name           string
		server, client *tls.Config
		want           string // the refusing side's error
	}{
		{"client of another CA", a.Server, foreign.Client, "server: tls: failed to verify certificate: x509: certificate signed by unknown authority"},
		{"server of another CA", foreign.Server, a.Client, "client: peer certificate \"mallory\" failed verification against the cluster CA: x509: certificate signed by unknown authority"},
		{"expired client", a.Server, expired.Client, "server: tls: failed to verify certificate: x509: certificate has expired"},
		{"expired server", expired.Server, a.Client, "client: peer certificate \"expired\" failed verification against the cluster CA: x509: certificate has expired"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			serverErr, clientErr := handshake(t, tt.server, tt.client)
			if clientErr == nil || serverErr == nil {
				t.Fatalf("connection went through: client %v, server %v", clientErr, serverErr)
			}
			got := "client: " + clientErr.Error() + "\nserver: " + serverErr.Error()
			if !strings.Contains(got, tt.want) {
				t.Errorf("errors\n%s\ndo not contain %q", got, tt.want)
			}
		})
	}
}

// loadUnchecked builds the configurations from dir's certificate and key and
// the CA in caFile without Load's verification, to present a certificate
// Load would refuse.
func loadUnchecked(t *testing.T, dir, caFile string) *TLS {
	t.Helper()
	caPEM, _ := os.ReadFile(caFile)
	ca, err := parseCert(CAFile, caPEM)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return newTLS(pool, pair, "unchecked")
}
