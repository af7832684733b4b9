//! TLS to the databases weft uses (PostgreSQL for the journal and leases, Redis for leases): how a
//! URL asks for it, and the rustls client configuration that follows. The cluster transport's
//! mutual TLS (`cluster::tls`) reuses its chain-only check of a server's certificate.
//!
//! A URL asks for TLS with libpq's parameters, which weft reads for both databases (and removes
//! before the URL reaches the driver):
//!
//! - `sslmode=disable` (or neither parameter): no TLS.
//! - `sslmode=verify-full` — the default whenever TLS is asked for at all: the server's certificate
//!   must chain to a trusted root and name the host of the URL.
//! - `sslmode=verify-ca`: the chain is checked, the name is not.
//! - `sslmode=require`: encrypted, the certificate not checked (libpq's meaning; with `sslrootcert`
//!   it checks the chain, as `verify-ca`). Only when asked for by name.
//! - `sslrootcert=<path>`: the trusted roots, a PEM file of CA certificates; `sslrootcert=system`
//!   or none: the system's root certificates. Naming a file alone turns on `verify-full`.
//!
//! `prefer` and `allow` — TLS if the server happens to offer it — are refused: an attacker in the
//! middle decides whether they encrypt.
//!
//! rustls runs on the `ring` provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// `require`: none of it; the connection is encrypted, but to whoever answers.
    None,
    /// `verify-ca`: it chains to a trusted root.
    Chain,
    /// `verify-full`: it chains to a trusted root and names the host connected to.
    Full,
}

impl Verification {
    /// The `sslmode` value that asks for this.
    pub fn sslmode(self) -> &'static str {
        match self {
            Verification::None => "require",
            Verification::Chain => "verify-ca",
            Verification::Full => "verify-full",
        }
    }
}

/// Where the trusted roots come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roots {
    /// The system's certificate store.
    System,
    /// A PEM file of CA certificates.
    File(PathBuf),
}

/// TLS as a URL asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub verification: Verification,
    pub roots: Roots,
}

/// A URL with weft's TLS parameters taken out, and what they asked for (`None`: no TLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitUrl {
    pub url: String,
    pub tls: Option<TlsSettings>,
}

/// Takes `sslmode` and `sslrootcert` out of `url`'s query and reads them (see the module doc).
/// Other parameters stay, in their order.
pub fn split_url(url: &str) -> Result<SplitUrl, String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => {
            return Ok(SplitUrl {
                url: url.to_owned(),
                tls: None,
            });
        }
    };
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query, None),
    };
    let mut sslmode = None;
    let mut sslrootcert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", value)) => sslmode = Some(value),
            Some(("sslrootcert", value)) => sslrootcert = Some(value),
            _ => kept.push(pair),
        }
    }
    let mut rest = base.to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    if let Some(fragment) = fragment {
        rest.push('#');
        rest.push_str(fragment);
    }
    let roots = match sslrootcert {
        None | Some("system") => Roots::System,
        Some("") => return Err("sslrootcert is empty: name a PEM file of CA certificates".into()),
        Some(path) => Roots::File(PathBuf::from(path)),
    };
    let verification = match (sslmode, sslrootcert) {
        (None, None) => None,
        (Some("disable"), None) => None,
        (Some("disable"), Some(_)) => {
            return Err("sslrootcert is set but sslmode=disable turns TLS off: \
                 drop one of them"
                .into());
        }
        (None | Some("verify-full"), _) => Some(Verification::Full),
        (Some("verify-ca"), _) => Some(Verification::Chain),
        (Some("require"), None) => Some(Verification::None),
        (Some("require"), Some(_)) => Some(Verification::Chain),
        (Some(mode @ ("prefer" | "allow")), _) => {
            return Err(format!(
                "sslmode={mode} is not supported: it lets whoever sits on the network decide \
                 whether the connection is encrypted; use verify-full (or verify-ca, require, \
                 disable)"
            ));
        }
        (Some(other), _) => {
            return Err(format!(
                "unknown sslmode {other:?}: use disable, require, verify-ca or verify-full"
            ));
        }
    };
    Ok(SplitUrl {
        url: rest,
        tls: verification.map(|verification| TlsSettings {
            verification,
            roots,
        }),
    })
}

impl TlsSettings {
    /// The rustls client configuration: the roots loaded, the certificate checked as asked.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        // The provider rustls' crate features select: `ring`, the only one enabled.
        let builder = ClientConfig::builder();
        let provider = Arc::clone(builder.crypto_provider());
        let algorithms = provider.signature_verification_algorithms;
        let chain = match self.verification {
            Verification::Full => {
                return Ok(builder
                    .with_root_certificates(self.root_store()?)
                    .with_no_client_auth());
            }
            Verification::Chain => Some(
                WebPkiServerVerifier::builder_with_provider(
                    Arc::new(self.root_store()?),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|error| format!("TLS setup: {error}"))?,
            ),
            Verification::None => None,
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RelaxedVerifier { chain, algorithms }));
        Ok(config.with_no_client_auth())
    }

    /// The trusted roots as PEM, for clients that take them that way; `None` for the system's.
    pub fn roots_pem(&self) -> Result<Option<Vec<u8>>, String> {
        match &self.roots {
            Roots::System => Ok(None),
            Roots::File(path) => std::fs::read(path)
                .map(Some)
                .map_err(|error| format!("reading sslrootcert {}: {error}", path.display())),
        }
    }

    fn root_store(&self) -> Result<RootCertStore, String> {
        let mut store = RootCertStore::empty();
        match &self.roots {
            Roots::System => {
                let found = rustls_native_certs::load_native_certs();
                store.add_parsable_certificates(found.certs);
            }
            Roots::File(path) => {
                for certificate in read_certificates(path)? {
                    store.add(certificate).map_err(|error| {
                        format!(
                            "sslrootcert {}: unusable certificate: {error}",
                            path.display()
                        )
                    })?;
                }
            }
        }
        if store.is_empty() {
            return Err(match &self.roots {
                Roots::System => "no system root certificates were found: name a CA file with \
                                  sslrootcert"
                    .to_owned(),
                Roots::File(path) => format!("sslrootcert {} holds no certificate", path.display()),
            });
        }
        Ok(store)
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect())
        .map_err(|error| format!("reading sslrootcert {}: {error}", path.display()))
}

/// A check of a server's certificate against `roots` that forgives only a name mismatch: for
/// callers that compare the name themselves, after the handshake.
pub fn chain_only_verifier(
    roots: Arc<RootCertStore>,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let chain = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(provider))
        .build()
        .map_err(|error| format!("TLS setup: {error}"))?;
    Ok(Arc::new(RelaxedVerifier {
        chain: Some(chain),
        algorithms: provider.signature_verification_algorithms,
    }))
}

/// The relaxed modes' check of the server's certificate: with `chain` (`verify-ca`) the full check
/// with only a name mismatch forgiven; without (`require`) any certificate is taken. Either way the
/// handshake's signatures are checked against the certificate.
#[derive(Debug)]
struct RelaxedVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for RelaxedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(url: &str) -> Option<TlsSettings> {
        split_url(url).expect("a valid URL").tls
    }

    #[test]
    fn no_parameters_no_tls_and_the_url_untouched() {
        let url = "postgres://u@h:5432/db?connect_timeout=3";
        assert_eq!(split_url(url).unwrap().url, url);
        assert_eq!(tls(url), None);
        assert_eq!(tls("postgres://u@h/db?sslmode=disable"), None);
    }

    #[test]
    fn a_ca_file_alone_means_verify_full() {
        let split = split_url("postgres://u@h/db?sslrootcert=/ca.pem&application_name=x").unwrap();
        assert_eq!(split.url, "postgres://u@h/db?application_name=x");
        assert_eq!(
            split.tls,
            Some(TlsSettings {
                verification: Verification::Full,
                roots: Roots::File("/ca.pem".into()),
            })
        );
    }

    #[test]
    fn modes_read_as_libpq_reads_them() {
        let mode = |url| tls(url).map(|settings| settings.verification);
        assert_eq!(
            mode("postgres://h/d?sslmode=verify-full"),
            Some(Verification::Full)
        );
        assert_eq!(
            mode("postgres://h/d?sslmode=verify-ca"),
            Some(Verification::Chain)
        );
        assert_eq!(
            mode("postgres://h/d?sslmode=require"),
            Some(Verification::None)
        );
        assert_eq!(
            mode("postgres://h/d?sslmode=require&sslrootcert=/ca.pem"),
            Some(Verification::Chain)
        );
    }

    #[test]
    fn downgradable_unknown_and_contradictory_settings_are_refused() {
        for url in [
            "postgres://h/d?sslmode=prefer",
            "postgres://h/d?sslmode=allow",
            "postgres://h/d?sslmode=verify_full",
            "postgres://h/d?sslmode=disable&sslrootcert=/ca.pem",
            "postgres://h/d?sslrootcert=",
        ] {
            assert!(split_url(url).is_err(), "{url} accepted");
        }
    }

    #[test]
    fn a_missing_ca_file_is_named_in_the_error() {
        let settings = tls("rediss://h/?sslrootcert=/nonexistent/ca.pem").unwrap();
        let error = settings.client_config().unwrap_err();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }
}
