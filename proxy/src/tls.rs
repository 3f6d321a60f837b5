//! TLS: loading `domain.crt`/`domain.key`, generating them from the dev CA when missing, and a certificate
//! resolver whose certificate can be swapped at run time (SIGHUP) without touching open connections.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::ring as provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ca;
use crate::config::Config;

/// A TLS setup problem.
#[derive(Debug)]
pub struct TlsError(pub String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// Paths of the server certificate chain and key in a certs directory.
pub fn server_paths(certs_dir: &Path) -> (PathBuf, PathBuf) {
    (
        certs_dir.join(ca::SERVER_CERT),
        certs_dir.join(ca::SERVER_KEY),
    )
}

/// Load a PEM certificate chain and private key into a rustls [`CertifiedKey`].
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(TlsError(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError(format!("{}: {e}", key.display())))?;
    let signing = provider::sign::any_supported_type(&key_der)
        .map_err(|e| TlsError(format!("{}: {e}", key.display())))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        TlsError(format!(
            "{} does not match {}: {e}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok(ck)
}

/// What [`ensure_server_cert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// `domain.crt`/`domain.key` were there and are used as they are.
    Existing,
    /// They were generated; the CA certificate clients must trust is at this path.
    Generated {
        /// Path of `devdockerCA.crt`.
        ca_cert: PathBuf,
        /// Whether the CA itself was created now.
        new_ca: bool,
    },
}

/// Make sure the server certificate exists: when `domain.crt` or `domain.key` is missing, create the dev CA (if
/// it is missing too) and issue a server certificate for the configured TLS hosts.
pub fn ensure_server_cert(config: &Config) -> Result<CertSource, TlsError> {
    let (cert, key) = server_paths(&config.certs_dir);
    if cert.exists() && key.exists() {
        return Ok(CertSource::Existing);
    }
    let hosts = config.effective_tls_hosts();
    let ca_cert = config.certs_dir.join(ca::CA_CERT);
    let ca_present = ca_cert.exists() && config.certs_dir.join(ca::CA_KEY).exists();
    let result = if ca_present {
        ca::issue(&config.certs_dir, &hosts, ca::KeyType::EcdsaP256)
    } else {
        ca::init(&config.certs_dir, &hosts, ca::KeyType::EcdsaP256, false)
    };
    let issued = result.map_err(|e| TlsError(e.to_string()))?;
    Ok(CertSource::Generated {
        ca_cert: issued.ca_cert,
        new_ca: !ca_present,
    })
}

/// A certificate resolver whose certificate can be replaced while serving.
#[derive(Debug)]
pub struct ReloadableCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    /// Load the certificate and key now.
    pub fn load(cert_path: PathBuf, key_path: PathBuf) -> Result<Self, TlsError> {
        let ck = load_certified_key(&cert_path, &key_path)?;
        Ok(ReloadableCert {
            cert_path,
            key_path,
            current: RwLock::new(Arc::new(ck)),
        })
    }

    /// Re-read the files; on error the previous certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let ck = load_certified_key(&self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
        Ok(())
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

/// The rustls server configuration: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
pub fn server_config(resolver: Arc<ReloadableCert>) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg =
        rustls::ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
