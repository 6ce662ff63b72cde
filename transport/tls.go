package transport

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// Files of a TLS directory, as `phaul certs` writes them. Both hosts get
// the same directory: the service uses server.*, the client client.*, and
// both trust only ca.pem.
const (
	CAFile         = "ca.pem"
	ServerCertFile = "server.pem"
	ServerKeyFile  = "server-key.pem"
	ClientCertFile = "client.pem"
	ClientKeyFile  = "client-key.pem"
)

// ServerTLS loads the service's TLS configuration from dir: TLS 1.3 only,
// client certificates required and verified against ca.pem.
func ServerTLS(dir string) (*tls.Config, error) {
	pool, err := loadCA(dir)
	if err != nil {
		return nil, err
	}
	cert, err := loadPair(dir, ServerCertFile, ServerKeyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}, nil
}

// ClientTLS loads the client's TLS configuration from dir; serverName ""
// means TLSServerName.
func ClientTLS(dir, serverName string) (*tls.Config, error) {
	pool, err := loadCA(dir)
	if err != nil {
		return nil, err
	}
	cert, err := loadPair(dir, ClientCertFile, ClientKeyFile)
	if err != nil {
		return nil, err
	}
	if serverName == "" {
		serverName = TLSServerName
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   serverName,
	}, nil
}

func loadCA(dir string) (*x509.CertPool, error) {
	path := filepath.Join(dir, CAFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tls: %w (create the directory with `phaul certs DIR` and copy it to both hosts)", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("tls: %s holds no PEM certificate", path)
	}
	return pool, nil
}

func loadPair(dir, certFile, keyFile string) (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, certFile), filepath.Join(dir, keyFile))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tls: load %s: %w (create the directory with `phaul certs DIR`)", filepath.Join(dir, certFile), err)
	}
	return cert, nil
}

// GenerateCerts writes a new private CA and a server and a client
// certificate signed by it into dir (created 0700). The server
// certificate names TLSServerName and every host in hosts (IP addresses
// or DNS names). The CA's private key is not kept unless keepCAKey: no
// further certificates can then be issued under this CA. Existing files
// are not overwritten.
func GenerateCerts(dir string, hosts []string, validFor time.Duration, keepCAKey bool) error {
	for _, f := range []string{CAFile, ServerCertFile, ServerKeyFile, ClientCertFile, ClientKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return fmt.Errorf("certs: %s already exists; use an empty directory", filepath.Join(dir, f))
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	now := time.Now().Add(-5 * time.Minute) // tolerate some clock skew between hosts
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "phaul CA"},
		NotBefore:             now,
		NotAfter:              now.Add(validFor),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	if err := writePEM(filepath.Join(dir, CAFile), "CERTIFICATE", caDER, 0o644); err != nil {
		return err
	}
	if keepCAKey {
		der, err := x509.MarshalECPrivateKey(caKey)
		if err != nil {
			return fmt.Errorf("certs: %w", err)
		}
		if err := writePEM(filepath.Join(dir, "ca-key.pem"), "EC PRIVATE KEY", der, 0o600); err != nil {
			return err
		}
	}
	leaf := func(cn string, usage x509.ExtKeyUsage, certFile, keyFile string, names []string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return fmt.Errorf("certs: %w", err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: serial(),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now,
			NotAfter:     now.Add(validFor),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		for _, n := range names {
			if ip := net.ParseIP(n); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, n)
			}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return fmt.Errorf("certs: %w", err)
		}
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return fmt.Errorf("certs: %w", err)
		}
		if err := writePEM(filepath.Join(dir, certFile), "CERTIFICATE", der, 0o644); err != nil {
			return err
		}
		return writePEM(filepath.Join(dir, keyFile), "EC PRIVATE KEY", kder, 0o600)
	}
	if err := leaf("phaul-service", x509.ExtKeyUsageServerAuth, ServerCertFile, ServerKeyFile, append([]string{TLSServerName}, hosts...)); err != nil {
		return err
	}
	return leaf("phaul client", x509.ExtKeyUsageClientAuth, ClientCertFile, ClientKeyFile, nil)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	return nil
}

// ErrAuth is matched (errors.Is) by failures of the TLS handshake due to
// certificates, on either side.
var ErrAuth = errors.New("tls authentication failed")

type authError struct{ err error }

func (e *authError) Error() string {
	return fmt.Sprintf("tls authentication failed: %v (are both hosts using certificates from the same `phaul certs` directory?)", e.err)
}
func (e *authError) Unwrap() error        { return e.err }
func (e *authError) Is(target error) bool { return target == ErrAuth }

// ReloadableTLS is a server TLS configuration whose certificates (the CA
// and the server's pair, from a `phaul certs` directory) can be re-read
// while the server runs, on SIGHUP: new handshakes use the new ones,
// established connections are not touched.
type ReloadableTLS struct {
	dir string
	cur atomic.Pointer[tls.Config]
}

// NewReloadableTLS loads the server's TLS configuration from dir.
func NewReloadableTLS(dir string) (*ReloadableTLS, error) {
	r := &ReloadableTLS{dir: dir}
	if err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Reload re-reads the certificates; on error the previous ones stay.
func (r *ReloadableTLS) Reload() error {
	c, err := ServerTLS(r.dir)
	if err != nil {
		return err
	}
	r.cur.Store(c)
	return nil
}

// Config is what the listener uses: every handshake takes the current
// configuration.
func (r *ReloadableTLS) Config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return r.cur.Load(), nil
		},
	}
}
