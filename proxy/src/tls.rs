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
    warn_if_unconstrained(&config.certs_dir);
    let (cert, key) = server_paths(&config.certs_dir);
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(CertSource::Existing),
        (false, false) => {}
        (true, false) | (false, true) => {
            let (there, missing) = if cert.exists() {
                (&cert, &key)
            } else {
                (&key, &cert)
            };
            return Err(TlsError(format!(
                "{} exists but {} does not; put the matching file back (or remove both to have a new \
                 certificate generated); not overwriting",
                there.display(),
                missing.display()
            )));
        }
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

/// Logs a warning when the dev CA in `dir` (certificate and key) has no name constraints: whoever gets its key
/// can then make certificates for any site, which every client that trusts the CA accepts.
pub fn warn_if_unconstrained(dir: &Path) {
    if !dir.join(ca::CA_CERT).exists() || !dir.join(ca::CA_KEY).exists() {
        return;
    }
    match ca::ca_constraints(dir) {
        Ok(None) => tracing::warn!(
            "{} has no name constraints: anyone who gets {} can make certificates for any site, and every \
             client that trusts this CA would accept them. Make a CA limited to the names clients use with \
             `berth-proxy ca init --force --host NAME ...` (one --host per name or address), restart, and run \
             scripts/install-ca.sh again on every client",
            dir.join(ca::CA_CERT).display(),
            dir.join(ca::CA_KEY).display()
        ),
        Ok(Some(names)) => tracing::info!("the dev CA may vouch for: {}", names.join(", ")),
        Err(e) => tracing::warn!("cannot read the dev CA's name constraints: {e}"),
    }
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

    /// The certificate and key served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What [`renew_if_due`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// The served certificate was not issued by the dev CA in the certs directory (brought by the user, or no dev
    /// CA): it is left alone.
    NotOurs,
    /// Ours, and more than the threshold is left; `not_after` is its end (Unix seconds).
    NotDue {
        /// End of validity, Unix seconds.
        not_after: i64,
    },
    /// Re-issued from the dev CA and swapped in; `not_after` is the new certificate's end (Unix seconds).
    Renewed {
        /// End of validity of the new certificate, Unix seconds.
        not_after: i64,
    },
}

/// When the served certificate was issued by the dev CA in `certs_dir` and has less than `renew_before` left,
/// issue a new one for the same names (and key type) with `lifetime`, and swap it in through
/// [`ReloadableCert::reload`]. A certificate the user brought (not signed by `devdockerCA`) is never touched.
/// Blocking (reads files, generates keys): call from a blocking thread.
pub fn renew_if_due(
    certs_dir: &Path,
    cert: &ReloadableCert,
    renew_before: std::time::Duration,
    lifetime: time::Duration,
) -> Result<Renewal, TlsError> {
    use x509_parser::prelude::*;
    let current = cert.current();
    let Some(leaf_der) = current.cert.first() else {
        return Ok(Renewal::NotOurs);
    };
    // What signs server certificates: the issuer when there is one, else the CA itself.
    let issuer_path = certs_dir.join(ca::CA_ISSUER);
    let ca_path = if issuer_path.exists() {
        issuer_path
    } else {
        certs_dir.join(ca::CA_CERT)
    };
    if !ca_path.exists() || !certs_dir.join(ca::CA_KEY).exists() {
        return Ok(Renewal::NotOurs);
    }
    let ca_der = CertificateDer::from_pem_file(&ca_path)
        .map_err(|e| TlsError(format!("{}: {e}", ca_path.display())))?;
    let (_, ca_cert) = parse_x509_certificate(ca_der.as_ref())
        .map_err(|e| TlsError(format!("{}: {e}", ca_path.display())))?;
    let (_, leaf) = parse_x509_certificate(leaf_der.as_ref())
        .map_err(|e| TlsError(format!("served certificate: {e}")))?;
    let ours = leaf.issuer().as_raw() == ca_cert.subject().as_raw()
        && leaf.verify_signature(Some(ca_cert.public_key())).is_ok();
    if !ours {
        return Ok(Renewal::NotOurs);
    }
    let not_after = leaf.validity().not_after.timestamp();
    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    let before = i64::try_from(renew_before.as_secs()).unwrap_or(i64::MAX);
    if not_after.saturating_sub(now) > before {
        return Ok(Renewal::NotDue { not_after });
    }
    let mut hosts = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => hosts.push(d.to_string()),
                GeneralName::IPAddress(raw) => {
                    let ip = match raw.len() {
                        4 => <[u8; 4]>::try_from(*raw).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*raw).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        hosts.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    if hosts.is_empty() {
        return Err(TlsError(
            "the served certificate names no host; renew it with `berth-proxy ca issue`".into(),
        ));
    }
    let key_type = match current.key.algorithm() {
        rustls::SignatureAlgorithm::RSA => ca::KeyType::Rsa2048,
        _ => ca::KeyType::EcdsaP256,
    };
    ca::issue_for(certs_dir, &hosts, key_type, lifetime).map_err(|e| TlsError(e.to_string()))?;
    cert.reload()?;
    let renewed = cert.current();
    let not_after = renewed
        .cert
        .first()
        .and_then(|d| parse_x509_certificate(d.as_ref()).ok())
        .map(|(_, c)| c.validity().not_after.timestamp())
        .unwrap_or_default();
    Ok(Renewal::Renewed { not_after })
}

/// Check the served certificate now and then every `every`, renewing it with [`renew_if_due`] (on a blocking
/// thread) when it is ours and has less than `renew_before` left. Runs until the task is aborted.
pub fn spawn_renewal(
    certs_dir: PathBuf,
    cert: Arc<ReloadableCert>,
    every: std::time::Duration,
    renew_before: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let dir = certs_dir.clone();
            let c = Arc::clone(&cert);
            let lifetime = time::Duration::days(ca::SERVER_DAYS);
            match tokio::task::spawn_blocking(move || {
                renew_if_due(&dir, &c, renew_before, lifetime)
            })
            .await
            {
                Ok(Ok(Renewal::Renewed { not_after })) => tracing::info!(
                    not_after,
                    "server certificate renewed from the dev CA {}",
                    certs_dir.join(ca::CA_CERT).display()
                ),
                Ok(Ok(Renewal::NotDue { .. } | Renewal::NotOurs)) => {}
                Ok(Err(e)) => tracing::error!(
                    "server certificate renewal failed, keeping the current one: {e}"
                ),
                Err(e) => tracing::error!("server certificate renewal task failed: {e}"),
            }
        }
    })
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

/// Sets the certificate expiry gauges: the certificate served now, and the dev CA when there is one.
pub fn note_expiry(metrics: &crate::metrics::Metrics, cert: &ReloadableCert, certs_dir: &Path) {
    let not_after = |der: &[u8]| {
        x509_parser::parse_x509_certificate(der)
            .ok()
            .map(|(_, c)| c.validity().not_after.timestamp())
    };
    if let Some(t) = cert
        .current()
        .cert
        .first()
        .and_then(|c| not_after(c.as_ref()))
    {
        metrics.cert_expiry.with_label_values(&["server"]).set(t);
    }
    let ca_path = certs_dir.join(ca::CA_CERT);
    if let Some(t) = CertificateDer::from_pem_file(&ca_path)
        .ok()
        .and_then(|der| not_after(der.as_ref()))
    {
        metrics.cert_expiry.with_label_values(&["ca"]).set(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_a_certificate_pair_is_an_error_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            certs_dir: dir.path().to_path_buf(),
            tls_hosts: vec!["localhost".into()],
            ..Config::default()
        };
        let (cert, key) = server_paths(dir.path());
        std::fs::write(&cert, "my certificate").unwrap();
        let err = ensure_server_cert(&config).unwrap_err().to_string();
        assert!(
            err.contains("domain.key") && err.contains("not overwriting"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "my certificate");
        assert!(!key.exists());
        std::fs::remove_file(&cert).unwrap();
        std::fs::write(&key, "my key").unwrap();
        assert!(ensure_server_cert(&config).is_err());
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "my key");
        std::fs::remove_file(&key).unwrap();
        assert!(matches!(
            ensure_server_cert(&config),
            Ok(CertSource::Generated { new_ca: true, .. })
        ));
        assert_eq!(ensure_server_cert(&config).unwrap(), CertSource::Existing);
    }
}
