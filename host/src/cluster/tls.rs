//! Mutual TLS between nodes: the `[cluster.tls]` section, the rustls configurations both ends of
//! a transport connection use, and the check that a peer's certificate names the node it says
//! it is.
//!
//! Every node holds a certificate signed by the cluster's CA whose DNS name is the node's name
//! (`weft cluster certs` makes them). Both ends of a connection present theirs and check the
//! other's chain against the CA file; then:
//! - the accepting node checks that the certificate names the node the connection's hello says
//!   it comes from, so one node cannot speak for another;
//! - the dialing node checks that the certificate names the node it meant to reach, when it knows
//!   the name (a seed dialed before membership named it is checked by chain only).
//!
//! The CA file may hold several CAs: that is how a cluster moves to a new CA one restart at a
//! time (docs/security.md § Rotating certificates).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Longest a TLS handshake may take, either side: a peer that connects and stays silent holds a
/// task and a socket no longer than this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The `[cluster.tls]` section of `weft.toml`: PEM files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsConfig {
    /// The CA (or CAs) whose certificates this node accepts from its peers.
    pub ca: PathBuf,
    /// This node's certificate (then any intermediates), naming the node.
    pub cert: PathBuf,
    /// The private key of `cert`.
    pub key: PathBuf,
}

/// Whether `name` can be named by a certificate: a DNS name, not an IP address.
pub fn certifiable_name(name: &str) -> Result<(), String> {
    match ServerName::try_from(name) {
        Ok(ServerName::DnsName(_)) => Ok(()),
        _ => Err(format!(
            "the node name {name:?} cannot be named by a certificate: with [cluster.tls], node \
             names are DNS names (letters, digits, '-' and '.')"
        )),
    }
}

/// Why a handshake this node started did not give a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialFailure {
    /// The peer answered with a certificate this node does not accept, or TLS it cannot speak.
    Refused(String),
    /// The peer did not complete the handshake: frozen, gone, or the connection broke.
    Unreachable(String),
}

impl DialFailure {
    pub fn reason(&self) -> &str {
        match self {
            DialFailure::Refused(reason) | DialFailure::Unreachable(reason) => reason,
        }
    }
}

/// Both ends of this node's TLS connections. Cheap to clone.
#[derive(Clone)]
pub struct ClusterTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTls")
    }
}

impl ClusterTls {
    /// Reads the files `config` names.
    pub fn load(config: &ClusterTlsConfig) -> Result<ClusterTls, String> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|error| format!("[cluster.tls] {what} {}: {error}", path.display()))
        };
        ClusterTls::from_pem(
            &read("ca", &config.ca)?,
            &read("cert", &config.cert)?,
            &read("key", &config.key)?,
        )
    }

    /// Both configurations from PEM: the trusted CAs, this node's chain and its key.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<ClusterTls, String> {
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(ca) {
            let certificate =
                certificate.map_err(|error| format!("[cluster.tls] ca: not PEM: {error}"))?;
            roots
                .add(certificate)
                .map_err(|error| format!("[cluster.tls] ca: unusable certificate: {error}"))?;
        }
        if roots.is_empty() {
            return Err("[cluster.tls] ca holds no certificate".into());
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|error| format!("[cluster.tls] cert: not PEM: {error}"))?;
        if chain.is_empty() {
            return Err("[cluster.tls] cert holds no certificate".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|error| format!("[cluster.tls] key: no private key: {error}"))?;
        let roots = Arc::new(roots);

        let server_builder = ServerConfig::builder();
        let provider = Arc::clone(server_builder.crypto_provider());
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|error| format!("[cluster.tls] ca: {error}"))?;
        let server = server_builder
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|error| format!("[cluster.tls] cert and key: {error}"))?;

        let client = ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(crate::tls::chain_only_verifier(roots, &provider)?)
            .with_client_auth_cert(chain, key)
            .map_err(|error| format!("[cluster.tls] cert and key: {error}"))?;
        Ok(ClusterTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The server side of a handshake on an accepted connection: the peer's certificate chains
    /// to the CA. Returns the stream and the peer's end-entity certificate, for [`names_node`].
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> Result<
        (
            tokio_rustls::server::TlsStream<TcpStream>,
            CertificateDer<'static>,
        ),
        String,
    > {
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream))
            .await
            .map_err(|_| format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"))?
            .map_err(|error| format!("TLS handshake failed: {error}"))?;
        let certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .cloned()
            .ok_or("TLS handshake without a client certificate")?;
        Ok((stream, certificate))
    }

    /// The client side of a handshake to `peer`: its certificate chains to the CA and, when
    /// `peer_name` is a node name rather than an address, names that node.
    pub async fn connect(
        &self,
        stream: TcpStream,
        peer_name: &str,
        peer: SocketAddr,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, DialFailure> {
        let known_name = peer_name.parse::<SocketAddr>().is_err();
        // The name sent in SNI; the chain-only verifier does not compare it.
        let server_name = match ServerName::try_from(peer_name.to_owned()) {
            Ok(name) if known_name => name,
            _ => ServerName::IpAddress(peer.ip().into()),
        };
        let stream = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            self.connector.connect(server_name, stream),
        )
        .await
        .map_err(|_| {
            DialFailure::Unreachable(format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"))
        })?
        .map_err(|error| {
            let reason = format!("TLS handshake failed: {error}");
            // rustls' own errors (a certificate refused, an alert) come wrapped in the I/O error;
            // anything else is the connection failing.
            match error
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                true => DialFailure::Refused(reason),
                false => DialFailure::Unreachable(reason),
            }
        })?;
        if known_name {
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .ok_or_else(|| {
                    DialFailure::Refused("TLS handshake without a server certificate".into())
                })?;
            names_node(certificate, peer_name).map_err(DialFailure::Refused)?;
        }
        Ok(stream)
    }
}

/// `Ok` if `certificate` names the node `name` (as a DNS name).
pub fn names_node(certificate: &CertificateDer<'_>, name: &str) -> Result<(), String> {
    let parsed = ParsedCertificate::try_from(certificate)
        .map_err(|error| format!("an unreadable certificate: {error}"))?;
    let server_name = ServerName::try_from(name)
        .map_err(|_| format!("no certificate can name the node {name:?}"))?;
    rustls::client::verify_server_name(&parsed, &server_name)
        .map_err(|_| format!("the certificate presented does not name the node {name:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::certs::DevelopmentCa;

    #[test]
    fn a_certificate_names_its_node_and_no_other() {
        let ca = DevelopmentCa::generate().unwrap();
        let issued = ca.issue("node-1").unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert!(names_node(&der, "node-1").is_ok());
        let error = names_node(&der, "node-2").unwrap_err();
        assert!(error.contains("node-2"), "{error}");
    }

    #[test]
    fn node_names_that_are_not_dns_names_are_refused() {
        assert!(certifiable_name("node-1").is_ok());
        assert!(certifiable_name("eu.node-1").is_ok());
        assert!(certifiable_name("127.0.0.1").is_err());
        assert!(certifiable_name("node 1").is_err());
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let ca = DevelopmentCa::generate().unwrap();
        let issued = ca.issue("node-1").unwrap();
        let ca_pem = ca.cert_pem();
        let error =
            ClusterTls::from_pem(b"", issued.cert_pem.as_bytes(), issued.key_pem.as_bytes())
                .unwrap_err();
        assert!(error.contains("ca holds no certificate"), "{error}");
        let error =
            ClusterTls::from_pem(ca_pem.as_bytes(), b"", issued.key_pem.as_bytes()).unwrap_err();
        assert!(error.contains("cert holds no certificate"), "{error}");
        let error =
            ClusterTls::from_pem(ca_pem.as_bytes(), issued.cert_pem.as_bytes(), b"").unwrap_err();
        assert!(error.contains("key"), "{error}");
        assert!(
            ClusterTls::from_pem(
                ca_pem.as_bytes(),
                issued.cert_pem.as_bytes(),
                issued.key_pem.as_bytes()
            )
            .is_ok()
        );
    }
}
