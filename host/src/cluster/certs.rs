//! `weft cluster certs`: a development CA for the cluster transport and node certificates it
//! signs, as PEM files in one directory.
//!
//! The directory holds `ca.pem` and `ca.key`, and `<node>.pem` and `<node>.key` for each node.
//! An existing CA in the directory is reused, so nodes can be added (or their certificates
//! renewed) later; keys are written readable by their owner only. A production cluster would
//! rather take its certificates from its own PKI: any CA works, as long as each node's
//! certificate carries the node's name as a DNS name (docs/security.md).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::tls::certifiable_name;

/// How long the certificates made here are valid: long enough for a development cluster.
const VALID_DAYS: i64 = 825;

/// A CA and its key.
pub struct DevelopmentCa {
    cert_pem: String,
    key: KeyPair,
}

/// A node certificate and its key, as PEM.
pub struct IssuedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The files [`write_certificates`] wrote or reused.
#[derive(Debug)]
pub struct WrittenCertificates {
    pub ca: PathBuf,
    /// Whether `ca` was made now (else it was in the directory already).
    pub ca_created: bool,
    /// Each node's `(certificate, key)`.
    pub nodes: Vec<(PathBuf, PathBuf)>,
}

impl DevelopmentCa {
    /// A new CA with a name of its own (a peer that trusts another CA finds no issuer at all,
    /// rather than one of the same name whose signature does not match).
    pub fn generate() -> Result<DevelopmentCa, String> {
        let key = KeyPair::generate().map_err(|error| format!("generating a key: {error}"))?;
        let mut params = validity(CertificateParams::default());
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(
            DnType::CommonName,
            format!("weft cluster CA {}", ulid::Ulid::new()),
        );
        let cert = params
            .self_signed(&key)
            .map_err(|error| format!("signing the CA: {error}"))?;
        Ok(DevelopmentCa {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// The CA `ca.pem` and `ca.key` in `directory` hold.
    pub fn read(directory: &Path) -> Result<DevelopmentCa, String> {
        let read = |name: &str| {
            let path = directory.join(name);
            std::fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))
        };
        let cert_pem = read("ca.pem")?;
        let key = KeyPair::from_pem(&read("ca.key")?)
            .map_err(|error| format!("ca.key: not a private key: {error}"))?;
        Ok(DevelopmentCa { cert_pem, key })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for the node `name`, for both ends of its connections.
    pub fn issue(&self, name: &str) -> Result<IssuedCertificate, String> {
        certifiable_name(name)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(|error| format!("ca.pem: not a CA certificate: {error}"))?;
        let key = KeyPair::generate().map_err(|error| format!("generating a key: {error}"))?;
        let mut params = validity(
            CertificateParams::new(vec![name.to_owned()])
                .map_err(|error| format!("the node name {name:?}: {error}"))?,
        );
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|error| format!("signing {name}'s certificate: {error}"))?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn validity(mut params: CertificateParams) -> CertificateParams {
    let now = time::OffsetDateTime::now_utc();
    // An hour back: a peer whose clock is a little behind still accepts a fresh certificate.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(VALID_DAYS);
    params
}

/// Writes a certificate for each of `nodes` into `directory` (created if missing), signed by the
/// CA there, or by a new one written there first.
pub fn write_certificates(
    directory: &Path,
    nodes: &[String],
) -> Result<WrittenCertificates, String> {
    for name in nodes {
        certifiable_name(name)?;
    }
    std::fs::create_dir_all(directory)
        .map_err(|error| format!("creating {}: {error}", directory.display()))?;
    let ca_path = directory.join("ca.pem");
    let ca_created = !ca_path.exists();
    let ca = if ca_created {
        let ca = DevelopmentCa::generate()?;
        write_private(&directory.join("ca.key"), &ca.key.serialize_pem())?;
        write(&ca_path, &ca.cert_pem)?;
        ca
    } else {
        DevelopmentCa::read(directory)?
    };
    let mut written = Vec::with_capacity(nodes.len());
    for name in nodes {
        let issued = ca.issue(name)?;
        let (cert, key) = (
            directory.join(format!("{name}.pem")),
            directory.join(format!("{name}.key")),
        );
        write_private(&key, &issued.key_pem)?;
        write(&cert, &issued.cert_pem)?;
        written.push((cert, key));
    }
    Ok(WrittenCertificates {
        ca: ca_path,
        ca_created,
        nodes: written,
    })
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|error| format!("writing {}: {error}", path.display()))
}

/// Writes `text` to `path`, readable and writable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| format!("writing {}: {error}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|error| format!("writing {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_reuses_the_ca_and_adds_nodes() {
        let directory = tempfile::tempdir().unwrap();
        let first = write_certificates(directory.path(), &["a".into(), "b".into()]).unwrap();
        assert!(first.ca_created);
        let ca = std::fs::read_to_string(&first.ca).unwrap();
        let second = write_certificates(directory.path(), &["c".into()]).unwrap();
        assert!(!second.ca_created);
        assert_eq!(std::fs::read_to_string(&second.ca).unwrap(), ca);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&second.nodes[0].1)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Every node's certificate chains to the one CA: a node made later talks to the first.
        let load = |name: &str| {
            crate::cluster::tls::ClusterTls::load(&crate::cluster::tls::ClusterTlsConfig {
                ca: first.ca.clone(),
                cert: directory.path().join(format!("{name}.pem")),
                key: directory.path().join(format!("{name}.key")),
            })
        };
        assert!(load("a").is_ok() && load("c").is_ok());
    }

    #[test]
    fn names_no_certificate_can_carry_are_refused_before_anything_is_written() {
        let directory = tempfile::tempdir().unwrap();
        let error =
            write_certificates(directory.path(), &["ok".into(), "not ok".into()]).unwrap_err();
        assert!(error.contains("not ok"), "{error}");
        assert!(!directory.path().join("ca.pem").exists());
    }
}
