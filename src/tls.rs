//! TLS for client streams (RFC 6120 §5, XEP-0368): loads the configured PEM certificate or
//! generates a self-signed one into the data dir on first start, builds the rustls server
//! config, and extracts the channel-binding data SCRAM-*-PLUS needs (RFC 9266, RFC 5929).

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sasl::ChannelBindings;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no certificate found in PEM")]
    NoCert(PathBuf),
    #[error("{0}: no private key found in PEM")]
    NoKey(PathBuf),
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What the listeners share: the acceptor and the leaf certificate's end-point hash.
#[derive(Clone)]
pub struct TlsContext {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// RFC 5929 tls-server-end-point value, None when the signature hash is undefined for it.
    pub server_end_point: Option<Vec<u8>>,
    /// The leaf certificate (tests trust it directly).
    pub leaf: CertificateDer<'static>,
    /// The whole chain and its key: s2s builds its own configurations from them (client
    /// certificate for outbound streams, optional client auth inbound; `crate::s2s::certs`).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl TlsContext {
    /// Use `cert`/`key` when given, else `data_dir/tls/{cert,key}.pem`, generating them once.
    pub fn load(
        cert: &str,
        key: &str,
        data_dir: &Path,
        domains: &[String],
    ) -> Result<TlsContext, TlsError> {
        let (cert_path, key_path) = if cert.is_empty() {
            let dir = data_dir.join("tls");
            let c = dir.join("cert.pem");
            let k = dir.join("key.pem");
            if !c.exists() || !k.exists() {
                generate_self_signed(&dir, &c, &k, domains)?;
            }
            (c, k)
        } else {
            (PathBuf::from(cert), PathBuf::from(key))
        };
        let chain = read_certs(&cert_path)?;
        let key = read_key(&key_path)?;
        let leaf = chain
            .first()
            .cloned()
            .ok_or_else(|| TlsError::NoCert(cert_path.clone()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())?;
        // Sessions are long-lived; resumption tickets buy little and cost memory.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(TlsContext {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            server_end_point: server_end_point(&leaf),
            leaf,
            chain,
            key: Arc::new(key),
        })
    }

    /// Channel-binding data for one established connection.
    pub fn bindings(&self, conn: &rustls::ServerConnection) -> ChannelBindings {
        let exporter = if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            let mut out = vec![0u8; 32];
            match conn.export_keying_material(&mut out, b"EXPORTER-Channel-Binding", None) {
                Ok(_) => Some(out),
                Err(_) => None,
            }
        } else {
            None
        };
        ChannelBindings {
            tls_exporter: exporter,
            tls_server_end_point: self.server_end_point.clone(),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn generate_self_signed(
    dir: &Path,
    cert_path: &Path,
    key_path: &Path,
    domains: &[String],
) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut names = domains.to_vec();
    for d in domains {
        // Services added later (MUC, upload) live on subdomains.
        names.push(format!("*.{d}"));
    }
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut params = rcgen::CertificateParams::new(names).map_err(gen)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(first) = domains.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, first.as_str());
    }
    // Valid from yesterday for ten years: clients show these dates when asked to trust it.
    let (y, m, d) = crate::stanza::civil_date(crate::stanza::now_ms() / 1000 - 86_400);
    params.not_before = rcgen::date_time_ymd(y as i32, m as u8, d as u8);
    params.not_after = rcgen::date_time_ymd(y as i32 + 10, m as u8, d.min(28) as u8);
    let key = rcgen::KeyPair::generate().map_err(gen)?;
    let cert = params.self_signed(&key).map_err(gen)?;
    write_private(key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, cert.pem()).map_err(io_err(cert_path))?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed certificate");
    Ok(())
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(io_err(path))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(io_err(path))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(path.to_path_buf()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(io_err(path))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(io_err(path))?
        .ok_or_else(|| TlsError::NoKey(path.to_path_buf()))
}

/// RFC 5929 §4.1: hash the certificate with its signature's hash, upgraded to SHA-256 when
/// that is MD5 or SHA-1. Undefined (None) for signature schemes without a hash (Ed25519).
pub fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], // sha384WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],       // ecdsa-with-SHA384
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], // sha512WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],       // ecdsa-with-SHA512
    ];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    let oid = signature_oid(cert)?;
    if oid == ED25519 || oid == [0x2b, 0x65, 0x71] {
        return None;
    }
    Some(if SHA384.contains(&oid) {
        sha2::Sha384::digest(cert).to_vec()
    } else if SHA512.contains(&oid) {
        sha2::Sha512::digest(cert).to_vec()
    } else {
        sha2::Sha256::digest(cert).to_vec()
    })
}

/// The OID bytes of Certificate.signatureAlgorithm (minimal DER walk, never panics).
fn signature_oid(der: &[u8]) -> Option<&[u8]> {
    let (tag, cert, _) = der_item(der)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, after_tbs) = der_item(cert)?;
    let (tag, alg, _) = der_item(after_tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der_item(alg)?;
    (tag == 0x06).then_some(oid)
}

/// Split one DER item: (tag, contents, rest).
pub(crate) fn der_item(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *data.first()?;
    let first = *data.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *data.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, data.get(header..end)?, data.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_and_reloads_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let a = TlsContext::load("", "", dir.path(), &["example.org".into()]).unwrap();
        let b = TlsContext::load("", "", dir.path(), &["example.org".into()]).unwrap();
        assert_eq!(
            a.leaf, b.leaf,
            "second start must reuse the generated certificate"
        );
        // rcgen signs with ECDSA P-256/SHA-256, so the end-point hash is SHA-256 of the DER.
        assert_eq!(
            a.server_end_point.as_deref(),
            Some(sha2::Sha256::digest(a.leaf.as_ref()).as_slice())
        );
    }

    #[test]
    fn der_walk_rejects_garbage() {
        assert!(server_end_point(&[]).is_none());
        assert!(server_end_point(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(server_end_point(&[0x30, 0x03, 0x30, 0x01]).is_none());
    }
}
