// Package certs owns the cluster's certificate authority and the node
// certificates peers use to authenticate each other with mutual TLS
// (`thaw certs`).
//
// Membership of the peer network is proven by a certificate the cluster CA
// signed, not by a network address: a node's address can change (a
// rescheduled pod) or be one the certificate does not list (a test harness, a
// NAT), but only holders of a CA-signed key can speak to the cluster. So the
// TLS configurations Load returns verify the peer's chain against the CA, its
// validity period and its key usage on both sides, and deliberately skip
// hostname verification.
//
// Files, all PEM:
//
//	CA directory (InitCA):   ca.pem, ca-key.pem (0600)
//	node directory (Issue):  ca.pem, cert.pem, key.pem (0600)
//
// The package does not rotate or revoke certificates, and it does not decide
// which identity a node claims inside the cluster (see p2p/cluster).
package certs
