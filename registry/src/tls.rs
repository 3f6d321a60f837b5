//! TLS client settings shared by the registry's clients (Redis, mirrors' remotes): rustls with the ring
//! provider, the system's roots and/or CA certificates from a PEM file.

use std::sync::Arc;

/// A client configuration trusting the certificates in `cafile` (PEM) and, with `system_roots`, the
/// system's roots too. Fails when `cafile` cannot be read or holds no certificate, or when no root at all is
/// left to trust.
pub fn client_config(
    cafile: Option<&std::path::Path>,
    system_roots: bool,
) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if system_roots {
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
    }
    if let Some(path) = cafile {
        let before = roots.len();
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
        {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        if roots.len() == before {
            return Err(format!("{}: no certificate in it", path.display()));
        }
    }
    if roots.is_empty() {
        return Err("no CA certificates found on this system".into());
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}
