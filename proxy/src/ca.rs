//! The development CA: `devdockerCA.key`/`devdockerCA.crt` and the server certificate `domain.key`/`domain.crt`
//! it signs, made with rcgen, so a registry on a LAN gets HTTPS without a public CA.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// File name of the CA private key.
pub const CA_KEY: &str = "devdockerCA.key";
/// File name of the CA certificate (the file clients trust).
pub const CA_CERT: &str = "devdockerCA.crt";
/// File name of the server private key.
pub const SERVER_KEY: &str = "domain.key";
/// File name of the server certificate.
pub const SERVER_CERT: &str = "domain.crt";

/// CA lifetime: about ten years.
pub const CA_DAYS: i64 = 3650;
/// Server certificate lifetime: below the 398-day ceiling clients enforce.
pub const SERVER_DAYS: i64 = 397;

/// The kind of key to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KeyType {
    /// ECDSA on P-256 (fast, the default).
    #[default]
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    /// RSA 2048 (for old clients).
    #[value(name = "rsa2048")]
    Rsa2048,
}

/// Why a CA operation failed.
#[derive(Debug)]
pub enum CaError {
    /// The CA exists and `--force` was not given.
    CaExists(PathBuf),
    /// The CA is needed but missing.
    CaMissing(PathBuf),
    /// A name is neither a DNS name nor an IP address, or no name was given.
    BadHost(String),
    /// Reading or writing a file failed.
    Io(PathBuf, std::io::Error),
    /// Key or certificate generation failed.
    Crypto(String),
}

impl fmt::Display for CaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaError::CaExists(p) => write!(
                f,
                "a CA already exists at {}; pass --force to replace it (clients trusting it must be updated)",
                p.display()
            ),
            CaError::CaMissing(p) => write!(f, "no CA at {}; run `berth-proxy ca init` first", p.display()),
            CaError::BadHost(h) => write!(f, "{h}"),
            CaError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            CaError::Crypto(e) => write!(f, "certificate generation failed: {e}"),
        }
    }
}

impl std::error::Error for CaError {}

fn crypto(e: impl fmt::Display) -> CaError {
    CaError::Crypto(e.to_string())
}

/// What [`init`] or [`issue`] wrote.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Path of the CA certificate.
    pub ca_cert: PathBuf,
    /// Path of the server certificate.
    pub server_cert: PathBuf,
    /// Path of the server key.
    pub server_key: PathBuf,
    /// Subject alternative names in the server certificate.
    pub names: Vec<String>,
}

fn generate_key(kind: KeyType) -> Result<KeyPair, CaError> {
    match kind {
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(crypto),
        KeyType::Rsa2048 => {
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).map_err(crypto)?;
            let pem = key
                .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .map_err(crypto)?;
            KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).map_err(crypto)
        }
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let io = |e| CaError::Io(path.to_path_buf(), e);
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io)?;
    }
    tmp.write_all(contents.as_bytes()).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

fn ensure_dir(dir: &Path) -> Result<(), CaError> {
    std::fs::create_dir_all(dir).map_err(|e| CaError::Io(dir.to_path_buf(), e))
}

fn sans(hosts: &[String]) -> Result<Vec<SanType>, CaError> {
    if hosts.is_empty() {
        return Err(CaError::BadHost(
            "at least one --host or --ip is needed".into(),
        ));
    }
    hosts
        .iter()
        .map(|h| {
            if let Ok(ip) = h.parse::<IpAddr>() {
                Ok(SanType::IpAddress(ip))
            } else if crate::config::valid_dns_name(h) {
                Ok(SanType::DnsName(
                    h.to_ascii_lowercase()
                        .try_into()
                        .map_err(|_| CaError::BadHost(h.clone()))?,
                ))
            } else {
                Err(CaError::BadHost(format!(
                    "{h:?} is neither a DNS name nor an IP address"
                )))
            }
        })
        .collect()
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "berth");
    dn.push(DnType::CommonName, "berth development CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(CA_DAYS);
    params.serial_number = Some(rand::random::<u64>().into());
    params
}

fn server_params(hosts: &[String], lifetime: Duration) -> Result<CertificateParams, CaError> {
    // sans() refuses an empty list, so hosts[0] below exists.
    let subject_alt_names = sans(hosts)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "berth");
    dn.push(DnType::CommonName, hosts[0].clone());
    params.distinguished_name = dn;
    params.subject_alt_names = subject_alt_names;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    // The whole validity period (not only what is left of it) stays within the lifetime (SERVER_DAYS).
    params.not_before = now - Duration::hours(1);
    params.not_after = params.not_before + lifetime;
    params.serial_number = Some(rand::random::<u64>().into());
    Ok(params)
}

/// Create the CA in `dir` (refusing to replace an existing one unless `force`), then issue the server
/// certificate for `hosts` (DNS names and IP addresses).
pub fn init(
    dir: &Path,
    hosts: &[String],
    key_type: KeyType,
    force: bool,
) -> Result<Issued, CaError> {
    sans(hosts)?;
    ensure_dir(dir)?;
    let ca_key_path = dir.join(CA_KEY);
    let ca_cert_path = dir.join(CA_CERT);
    if !force && (ca_key_path.exists() || ca_cert_path.exists()) {
        return Err(CaError::CaExists(ca_cert_path));
    }
    let ca_key = generate_key(key_type)?;
    let ca_cert = ca_params().self_signed(&ca_key).map_err(crypto)?;
    write_file(&ca_key_path, &ca_key.serialize_pem(), 0o600)?;
    let ca_pem = ca_cert.pem();
    write_file(&ca_cert_path, &ca_pem, 0o644)?;
    issue_with(
        dir,
        hosts,
        key_type,
        &ca_cert,
        &ca_key,
        &ca_pem,
        Duration::days(SERVER_DAYS),
    )
}

/// Issue a new server certificate and key for `hosts` from the CA already in `dir`.
pub fn issue(dir: &Path, hosts: &[String], key_type: KeyType) -> Result<Issued, CaError> {
    issue_for(dir, hosts, key_type, Duration::days(SERVER_DAYS))
}

/// [`issue`] with a given validity period (at most [`SERVER_DAYS`] days are accepted by clients; shorter ones
/// are for tests of renewal).
pub fn issue_for(
    dir: &Path,
    hosts: &[String],
    key_type: KeyType,
    lifetime: Duration,
) -> Result<Issued, CaError> {
    sans(hosts)?;
    let ca_key_path = dir.join(CA_KEY);
    let ca_cert_path = dir.join(CA_CERT);
    if !ca_key_path.exists() || !ca_cert_path.exists() {
        return Err(CaError::CaMissing(ca_cert_path));
    }
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| CaError::Io(p.to_path_buf(), e));
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?).map_err(crypto)?;
    let ca_pem = read(&ca_cert_path)?;
    let params = CertificateParams::from_ca_cert_pem(&ca_pem).map_err(crypto)?;
    // Re-signing the parsed parameters yields the same subject and key, which is all signing a leaf needs; the
    // chain sent to clients carries the CA certificate exactly as in devdockerCA.crt.
    let ca_cert = params.self_signed(&ca_key).map_err(crypto)?;
    issue_with(dir, hosts, key_type, &ca_cert, &ca_key, &ca_pem, lifetime)
}

fn issue_with(
    dir: &Path,
    hosts: &[String],
    key_type: KeyType,
    ca_cert: &rcgen::Certificate,
    ca_key: &KeyPair,
    ca_pem: &str,
    lifetime: Duration,
) -> Result<Issued, CaError> {
    let key = generate_key(key_type)?;
    let cert = server_params(hosts, lifetime)?
        .signed_by(&key, ca_cert, ca_key)
        .map_err(crypto)?;
    let server_key = dir.join(SERVER_KEY);
    let server_cert = dir.join(SERVER_CERT);
    write_file(&server_key, &key.serialize_pem(), 0o600)?;
    // The chain clients receive: server certificate, then the CA.
    write_file(&server_cert, &format!("{}{}", cert.pem(), ca_pem), 0o644)?;
    Ok(Issued {
        ca_cert: dir.join(CA_CERT),
        server_cert,
        server_key,
        names: hosts.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_refuses_to_overwrite_and_issue_reuses_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["reg.example".to_string(), "127.0.0.1".to_string()];
        init(dir.path(), &hosts, KeyType::EcdsaP256, false).unwrap();
        let ca_before = std::fs::read(dir.path().join(CA_CERT)).unwrap();
        assert!(matches!(
            init(dir.path(), &hosts, KeyType::EcdsaP256, false),
            Err(CaError::CaExists(_))
        ));
        use std::os::unix::fs::PermissionsExt;
        for k in [CA_KEY, SERVER_KEY] {
            let mode = std::fs::metadata(dir.path().join(k))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{k}");
        }
        issue(
            dir.path(),
            &["other.example".to_string()],
            KeyType::EcdsaP256,
        )
        .unwrap();
        assert_eq!(std::fs::read(dir.path().join(CA_CERT)).unwrap(), ca_before);
        init(dir.path(), &hosts, KeyType::EcdsaP256, true).unwrap();
        assert_ne!(std::fs::read(dir.path().join(CA_CERT)).unwrap(), ca_before);
    }

    #[test]
    fn the_chain_carries_the_ca_certificate_as_it_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["reg.example".to_string()];
        init(dir.path(), &hosts, KeyType::EcdsaP256, false).unwrap();
        for _ in 0..2 {
            let ca = std::fs::read_to_string(dir.path().join(CA_CERT)).unwrap();
            let chain = std::fs::read_to_string(dir.path().join(SERVER_CERT)).unwrap();
            assert!(chain.ends_with(&ca), "{chain}\n---\n{ca}");
            assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
            issue(dir.path(), &hosts, KeyType::EcdsaP256).unwrap();
        }
    }

    #[test]
    fn bad_hosts_are_refused() {
        assert!(matches!(
            server_params(&[], Duration::days(1)),
            Err(CaError::BadHost(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            init(dir.path(), &[], KeyType::EcdsaP256, false),
            Err(CaError::BadHost(_))
        ));
        assert!(matches!(
            init(dir.path(), &["a b".into()], KeyType::EcdsaP256, false),
            Err(CaError::BadHost(_))
        ));
        assert!(matches!(
            issue(dir.path(), &["x".into()], KeyType::EcdsaP256),
            Err(CaError::CaMissing(_))
        ));
    }
}
