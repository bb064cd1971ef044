package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names inside a CA directory and a node directory.
const (
	CAFile    = "ca.pem"
	CAKeyFile = "ca-key.pem"
	CertFile  = "cert.pem"
	KeyFile   = "key.pem"
)

// Validity periods of what InitCA and Issue create.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	NodeValidity = 365 * 24 * time.Hour
)

// Errors of this package; callers test them with errors.Is.
var (
	// ErrExist: InitCA or Issue would overwrite an existing file. Remove the
	// files first (or pick another directory) to replace them on purpose.
	ErrExist = errors.New("certificate file already exists")
	// ErrInvalid: a file is missing, unreadable, or does not hold what it
	// should (a PEM certificate, a matching key, a CA certificate).
	ErrInvalid = errors.New("invalid certificate material")
)

// TLS holds the configurations of one node for the peer network. Both present
// the node's certificate and verify the peer's against the cluster CA.
type TLS struct {
	// Server is for the peer API and the Raft listener: TLS 1.3, client
	// certificates required and verified against the CA.
	Server *tls.Config
	// Client is for dialing peers: TLS 1.3, the server's chain verified
	// against the CA, its host name not checked (see the package doc).
	Client *tls.Config
	// NodeName is the common name of this node's certificate.
	NodeName string
}

// InitCA creates a cluster CA in dir (created if missing): an ECDSA P-256 key
// and a self-signed certificate valid for CAValidity. It refuses, with
// ErrExist, to overwrite an existing ca.pem or ca-key.pem.
func InitCA(dir string) error {
	certPath, keyPath := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	if err := refuseExisting(certPath, keyPath); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "thaw cluster CA", Organization: []string{"thaw"}},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("create CA certificate: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create CA directory: %w", err)
	}
	if err := writeKey(keyPath, key); err != nil {
		return err
	}
	return writeNew(certPath, certPEM(der), 0o644)
}

// Issue signs a node certificate with the CA in caDir and writes ca.pem,
// cert.pem and key.pem (0600) into outDir (created if missing). The
// certificate has CN=nodeName, one SAN per entry of hosts (an IP address or a
// DNS name), both the server and the client auth key usages, and is valid for
// NodeValidity. It refuses, with ErrExist, to overwrite cert.pem or key.pem;
// an existing ca.pem is replaced only if it is the same CA.
func Issue(caDir, outDir, nodeName string, hosts []string) error {
	now := time.Now()
	return issue(caDir, outDir, nodeName, hosts, now.Add(-5*time.Minute), now.Add(NodeValidity))
}

func issue(caDir, outDir, nodeName string, hosts []string, notBefore, notAfter time.Time) error {
	if strings.TrimSpace(nodeName) == "" {
		return fmt.Errorf("%w: empty node name", ErrInvalid)
	}
	caCert, caKey, err := loadCA(caDir)
	if err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(outDir, CertFile), filepath.Join(outDir, KeyFile)
	if err := refuseExisting(certPath, keyPath); err != nil {
		return err
	}
	caOut := filepath.Join(outDir, CAFile)
	if existing, err := os.ReadFile(caOut); err == nil {
		c, err := parseCert(caOut, existing)
		if err != nil || !c.Equal(caCert) {
			return fmt.Errorf("%s holds another CA than %s: %w", caOut, filepath.Join(caDir, CAFile), ErrExist)
		}
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate node key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: nodeName, Organization: []string{"thaw"}},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		switch {
		case h == "":
		case net.ParseIP(h) != nil:
			tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(h))
		default:
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		return fmt.Errorf("sign node certificate: %w", err)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("create node certificate directory: %w", err)
	}
	if err := writeKey(keyPath, key); err != nil {
		return err
	}
	if err := writeNew(certPath, certPEM(der), 0o644); err != nil {
		return err
	}
	// ca.pem may already hold the same CA (checked above).
	return writeReplace(caOut, certPEM(caCert.Raw), 0o644)
}

// Load reads ca.pem, cert.pem and key.pem from dir and returns the node's TLS
// configurations. Every error names the file at fault and wraps ErrInvalid.
func Load(dir string) (*TLS, error) {
	caPath := filepath.Join(dir, CAFile)
	caPEM, err := readFile(caPath)
	if err != nil {
		return nil, err
	}
	ca, err := parseCert(caPath, caPEM)
	if err != nil {
		return nil, err
	}
	if !ca.IsCA {
		return nil, fmt.Errorf("%s: not a CA certificate: %w", caPath, ErrInvalid)
	}
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	certPEM, err := readFile(certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readFile(keyPath)
	if err != nil {
		return nil, err
	}
	leaf, err := parseCert(certPath, certPEM)
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s does not match %s: %v: %w", keyPath, certPath, err, ErrInvalid)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	// Checked here so that a wrong or expired certificate is reported when
	// the daemon starts, not as handshake failures on every peer.
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return nil, fmt.Errorf("%s is not a valid certificate of the CA in %s (reissue it with `thaw certs`): %v: %w", certPath, caPath, err, ErrInvalid)
		}
	}
	return newTLS(pool, pair, leaf.Subject.CommonName), nil
}

// newTLS builds the configurations without checking pair against roots, so
// that tests can present a certificate Load would refuse.
func newTLS(pool *x509.CertPool, pair tls.Certificate, name string) *TLS {
	return &TLS{
		Server: &tls.Config{
			MinVersion:   tls.VersionTLS13,
			Certificates: []tls.Certificate{pair},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool,
		},
		Client: &tls.Config{
			MinVersion:   tls.VersionTLS13,
			Certificates: []tls.Certificate{pair},
			// Hostname verification is off on purpose: peers are dialled by
			// the address they advertise, which their certificate need not
			// list. VerifyConnection still verifies the chain, validity and
			// key usage against the cluster CA, which is what membership
			// means (see the package doc).
			InsecureSkipVerify: true,
			VerifyConnection: func(cs tls.ConnectionState) error {
				return verifyServer(pool, cs)
			},
		},
		NodeName: name,
	}
}

func verifyServer(roots *x509.CertPool, cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("peer presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("peer certificate %q failed verification against the cluster CA: %w", cs.PeerCertificates[0].Subject.CommonName, err)
	}
	return nil
}

func loadCA(dir string) (*x509.Certificate, crypto.Signer, error) {
	certPath, keyPath := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	certPEM, err := readFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := readFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	cert, err := parseCert(certPath, certPEM)
	if err != nil {
		return nil, nil, err
	}
	if !cert.IsCA {
		return nil, nil, fmt.Errorf("%s: not a CA certificate: %w", certPath, ErrInvalid)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("%s does not match %s: %v: %w", keyPath, certPath, err, ErrInvalid)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%s: key cannot sign: %w", keyPath, ErrInvalid)
	}
	return cert, signer, nil
}

func readFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s is missing (create it with `thaw certs`): %w", path, ErrInvalid)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %v: %w", path, err, ErrInvalid)
	}
	return b, nil
}

func parseCert(path string, b []byte) (*x509.Certificate, error) {
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return nil, fmt.Errorf("%s: no PEM CERTIFICATE block: %w", path, ErrInvalid)
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %v: %w", path, err, ErrInvalid)
		}
		return c, nil
	}
}

func refuseExisting(paths ...string) error {
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s: %w (remove it first to replace it)", p, ErrExist)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("check %s: %w", p, err)
		}
	}
	return nil
}

func serialNumber() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n, nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode key: %w", err)
	}
	return writeNew(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// writeNew creates path, failing if it exists, so two concurrent runs cannot
// both believe they wrote the key.
func writeNew(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s: %w", path, ErrExist)
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}

func writeReplace(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
