//! The development CA: `devdockerCA.key`/`devdockerCA.crt` and the server certificate `domain.key`/`domain.crt`
//! it signs, made with rcgen, so a registry on a LAN gets HTTPS without a public CA.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints,
    SanType,
};
use time::{Duration, OffsetDateTime};

/// File name of the private key that signs server certificates: the issuer's (see [`CA_ISSUER`]), or, for a CA
/// made before berth used an issuer, the CA's own.
pub const CA_KEY: &str = "devdockerCA.key";
/// File name of the CA certificate (the root, the file clients trust).
pub const CA_CERT: &str = "devdockerCA.crt";
/// File name of the issuer: an intermediate certificate, signed by the root and carrying the same name
/// constraints, whose key ([`CA_KEY`]) signs server certificates. The root's own key is thrown away once it has
/// signed the issuer, so nothing on disk can sign another intermediate, and every client (browsers included,
/// which do not apply a trusted root's own constraints) applies an intermediate's constraints.
pub const CA_ISSUER: &str = "devdockerCA-issuer.crt";
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
    /// The CA's name constraints do not cover a requested name.
    OutsideConstraints {
        /// The names refused.
        refused: Vec<String>,
        /// What the CA may vouch for.
        permitted: Vec<String>,
    },
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
            CaError::OutsideConstraints { refused, permitted } => write!(
                f,
                "the dev CA may only vouch for {} (its name constraints), not for {}; to serve those names, \
                 make a new CA that covers every name clients use: `berth-proxy ca init --force --host NAME \
                 ...` (one --host per name or address), then run scripts/install-ca.sh again on every client",
                permitted.join(", "),
                refused.join(", ")
            ),
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

/// What a new dev CA may vouch for: the names and addresses it is made for, plus `localhost` and loopback. The
/// constraint (critical), on the CA and on the issuer whose key signs, makes clients refuse any other name signed
/// with that key, so the CA is safe to trust system-wide even though the key stays on the proxy host.
fn permitted_subtrees(hosts: &[String]) -> Vec<GeneralSubtree> {
    let mut out = vec![
        GeneralSubtree::DnsName("localhost".into()),
        GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([127, 0, 0, 0], 8)),
        GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            128,
        )),
    ];
    for h in hosts {
        if out.iter().any(|s| within(h, s)) {
            continue;
        }
        let subtree = match h.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V4(_)) => {
                GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, 32))
            }
            Ok(ip @ IpAddr::V6(_)) => {
                GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, 128))
            }
            // A DNS subtree covers the name and every name below it, so `*.example` needs `example`.
            Err(_) => GeneralSubtree::DnsName(
                h.strip_prefix("*.")
                    .unwrap_or(h)
                    .trim_end_matches('.')
                    .to_ascii_lowercase(),
            ),
        };
        if !out.contains(&subtree) {
            out.push(subtree);
        }
    }
    out
}

/// A permitted subtree as people write it.
fn describe(subtree: &GeneralSubtree) -> String {
    match subtree {
        GeneralSubtree::DnsName(d) => d.clone(),
        GeneralSubtree::IpAddress(CidrSubnet::V4(a, m)) => {
            let prefix = u32::from_be_bytes(*m).count_ones();
            let ip = std::net::Ipv4Addr::from(*a);
            if prefix == 32 {
                ip.to_string()
            } else {
                format!("{ip}/{prefix}")
            }
        }
        GeneralSubtree::IpAddress(CidrSubnet::V6(a, m)) => {
            let prefix = u128::from_be_bytes(*m).count_ones();
            let ip = std::net::Ipv6Addr::from(*a);
            if prefix == 128 {
                ip.to_string()
            } else {
                format!("{ip}/{prefix}")
            }
        }
        other => format!("{other:?}"),
    }
}

/// Whether `host` (a DNS name or an IP address) lies within `subtree`.
fn within(host: &str, subtree: &GeneralSubtree) -> bool {
    match (host.parse::<IpAddr>(), subtree) {
        (Ok(IpAddr::V4(ip)), GeneralSubtree::IpAddress(CidrSubnet::V4(a, m))) => {
            let (ip, a, m) = (
                u32::from(ip),
                u32::from_be_bytes(*a),
                u32::from_be_bytes(*m),
            );
            ip & m == a & m
        }
        (Ok(IpAddr::V6(ip)), GeneralSubtree::IpAddress(CidrSubnet::V6(a, m))) => {
            let (ip, a, m) = (
                u128::from(ip),
                u128::from_be_bytes(*a),
                u128::from_be_bytes(*m),
            );
            ip & m == a & m
        }
        (Err(_), GeneralSubtree::DnsName(d)) => {
            let name = host.strip_prefix("*.").unwrap_or(host).to_ascii_lowercase();
            let d = d.trim_start_matches('.').to_ascii_lowercase();
            d.is_empty() || name == d || name.ends_with(&format!(".{d}"))
        }
        _ => false,
    }
}

/// The names the CA certificate in `dir` may vouch for, as written in its name constraints; `None` when it has
/// none (a CA made before berth constrained its CAs, or one you made yourself: it can sign for any name).
pub fn ca_constraints(dir: &Path) -> Result<Option<Vec<String>>, CaError> {
    let path = dir.join(CA_CERT);
    let pem = std::fs::read_to_string(&path).map_err(|e| CaError::Io(path.clone(), e))?;
    let params = CertificateParams::from_ca_cert_pem(&pem).map_err(crypto)?;
    Ok(params
        .name_constraints
        .map(|nc| nc.permitted_subtrees.iter().map(describe).collect()))
}

/// The root (`path_len` 1: it signs the issuer only) or the issuer (`path_len` 0: it signs server certificates).
fn ca_params(hosts: &[String], common_name: &str, path_len: u8) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "berth");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: permitted_subtrees(hosts),
        excluded_subtrees: Vec::new(),
    });
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
    // Not a host name: clients match names against the SANs alone, and a CN that looks like one (an IP
    // address does, to OpenSSL) would be checked against the CA's DNS name constraints when there is no DNS
    // SAN.
    dn.push(DnType::CommonName, "berth registry");
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
    let issuer_path = dir.join(CA_ISSUER);
    if !force && (ca_key_path.exists() || ca_cert_path.exists() || issuer_path.exists()) {
        return Err(CaError::CaExists(ca_cert_path));
    }
    // The root signs the issuer, then its key is dropped: it is never written anywhere.
    let root_key = generate_key(key_type)?;
    let root = ca_params(hosts, "berth development CA", 1)
        .self_signed(&root_key)
        .map_err(crypto)?;
    let issuer_key = generate_key(key_type)?;
    let issuer = ca_params(hosts, "berth development CA issuer", 0)
        .signed_by(&issuer_key, &root, &root_key)
        .map_err(crypto)?;
    drop(root_key);
    write_file(&ca_key_path, &issuer_key.serialize_pem(), 0o600)?;
    let issuer_pem = issuer.pem();
    write_file(&issuer_path, &issuer_pem, 0o644)?;
    let root_pem = root.pem();
    write_file(&ca_cert_path, &root_pem, 0o644)?;
    issue_with(
        dir,
        hosts,
        key_type,
        &issuer,
        &issuer_key,
        &format!("{issuer_pem}{root_pem}"),
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
    // The signer: the issuer when there is one (the key is its key), else the CA itself (made before berth used
    // an issuer). The chain sent to clients: the server certificate, the issuer if any, the CA.
    let issuer_path = dir.join(CA_ISSUER);
    let (signer_pem, chain_tail) = if issuer_path.exists() {
        let issuer_pem = read(&issuer_path)?;
        let tail = format!("{issuer_pem}{ca_pem}");
        (issuer_pem, tail)
    } else {
        (ca_pem.clone(), ca_pem.clone())
    };
    let params = CertificateParams::from_ca_cert_pem(&signer_pem).map_err(crypto)?;
    if let Some(nc) = &params.name_constraints {
        let refused: Vec<String> = hosts
            .iter()
            .filter(|h| !nc.permitted_subtrees.iter().any(|s| within(h, s)))
            .cloned()
            .collect();
        if !refused.is_empty() {
            return Err(CaError::OutsideConstraints {
                refused,
                permitted: nc.permitted_subtrees.iter().map(describe).collect(),
            });
        }
    }
    // Re-signing the parsed parameters yields the same subject and key, which is all signing a leaf needs; the
    // chain sent to clients carries the certificates exactly as they are on disk.
    let signer = params.self_signed(&ca_key).map_err(crypto)?;
    issue_with(
        dir,
        hosts,
        key_type,
        &signer,
        &ca_key,
        &chain_tail,
        lifetime,
    )
}

fn issue_with(
    dir: &Path,
    hosts: &[String],
    key_type: KeyType,
    signer: &rcgen::Certificate,
    signer_key: &KeyPair,
    chain_tail: &str,
    lifetime: Duration,
) -> Result<Issued, CaError> {
    let key = generate_key(key_type)?;
    let cert = server_params(hosts, lifetime)?
        .signed_by(&key, signer, signer_key)
        .map_err(crypto)?;
    let server_key = dir.join(SERVER_KEY);
    let server_cert = dir.join(SERVER_CERT);
    write_file(&server_key, &key.serialize_pem(), 0o600)?;
    // The chain clients receive: server certificate, then the issuer (if any) and the CA.
    write_file(&server_cert, &format!("{}{chain_tail}", cert.pem()), 0o644)?;
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
            &["other.reg.example".to_string()],
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
            assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 3);
            let issuer = std::fs::read_to_string(dir.path().join(CA_ISSUER)).unwrap();
            assert!(chain.ends_with(&format!("{issuer}{ca}")));
            issue(dir.path(), &hosts, KeyType::EcdsaP256).unwrap();
        }
    }

    /// A new CA (and server certificate) for `name` in a temporary directory.
    fn ca_for(name: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &[name.to_string()], KeyType::EcdsaP256, false).unwrap();
        dir
    }

    /// A leaf for `name`, signed with the CA key in `dir` directly (what someone holding the key could make,
    /// bypassing `issue`'s check).
    fn forged_leaf(dir: &Path, name: &str) -> rustls_pki_types::CertificateDer<'static> {
        let ca_key =
            KeyPair::from_pem(&std::fs::read_to_string(dir.join(CA_KEY)).unwrap()).unwrap();
        let ca_pem = std::fs::read_to_string(dir.join(CA_ISSUER)).unwrap();
        let ca = CertificateParams::from_ca_cert_pem(&ca_pem)
            .unwrap()
            .self_signed(&ca_key)
            .unwrap();
        let key = generate_key(KeyType::EcdsaP256).unwrap();
        let mut params = server_params(&[name.to_string()], Duration::days(30)).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.signed_by(&key, &ca, &ca_key).unwrap().der().clone()
    }

    fn rustls_accepts(dir: &Path, leaf: &rustls_pki_types::CertificateDer<'_>, name: &str) -> bool {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_file(dir.join(CA_CERT)).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let issuer = rustls_pki_types::CertificateDer::from_pem_file(dir.join(CA_ISSUER)).unwrap();
        verifier
            .verify_server_cert(
                leaf,
                &[issuer],
                &name,
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .is_ok()
    }

    #[test]
    fn a_new_ca_vouches_only_for_its_names_localhost_and_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["reg.example".to_string(), "10.0.0.5".to_string()];
        init(dir.path(), &hosts, KeyType::EcdsaP256, false).unwrap();
        // The extension is there and critical.
        let pem = std::fs::read(dir.path().join(CA_CERT)).unwrap();
        let (_, der) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = der.parse_x509().unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_NAME_CONSTRAINTS)
            .expect("no name constraints");
        assert!(ext.critical);
        assert_eq!(
            ca_constraints(dir.path()).unwrap().unwrap(),
            ["localhost", "127.0.0.0/8", "::1", "reg.example", "10.0.0.5"]
        );
        // Within: the names, a name below one, loopback.
        for ok in [
            "reg.example",
            "eu.reg.example",
            "10.0.0.5",
            "localhost",
            "127.0.0.1",
            "::1",
        ] {
            issue(dir.path(), &[ok.to_string()], KeyType::EcdsaP256)
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        // Outside: refused, saying what the CA covers and how to make a wider one.
        let e = issue(
            dir.path(),
            &[
                "reg.example".into(),
                "www.paypal.com".into(),
                "10.0.0.6".into(),
            ],
            KeyType::EcdsaP256,
        )
        .unwrap_err();
        match &e {
            CaError::OutsideConstraints { refused, .. } => {
                assert_eq!(refused, &["www.paypal.com", "10.0.0.6"])
            }
            other => panic!("{other}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("reg.example") && msg.contains("ca init --force"),
            "{msg}"
        );
        // rustls refuses a certificate for another name even when it is signed with the CA's key, and accepts
        // one for a permitted name.
        assert!(!rustls_accepts(
            dir.path(),
            &forged_leaf(dir.path(), "www.paypal.com"),
            "www.paypal.com"
        ));
        assert!(rustls_accepts(
            dir.path(),
            &forged_leaf(dir.path(), "reg.example"),
            "reg.example"
        ));
    }

    /// The key on disk is the issuer's, not the root's: the root (what clients trust) signed the issuer and its
    /// key was thrown away, and both carry the same critical name constraints.
    #[test]
    fn only_the_constrained_issuer_s_key_is_kept() {
        let dir = ca_for("reg.example");
        let key =
            KeyPair::from_pem(&std::fs::read_to_string(dir.path().join(CA_KEY)).unwrap()).unwrap();
        let der = |f: &str| {
            let pem = std::fs::read(dir.path().join(f)).unwrap();
            x509_parser::pem::parse_x509_pem(&pem).unwrap().1.contents
        };
        let (root_der, issuer_der) = (der(CA_CERT), der(CA_ISSUER));
        let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
        let (_, issuer) = x509_parser::parse_x509_certificate(&issuer_der).unwrap();
        let key_bits = key.public_key_raw();
        assert_ne!(root.public_key().subject_public_key.data.as_ref(), key_bits);
        assert_eq!(
            issuer.public_key().subject_public_key.data.as_ref(),
            key_bits
        );
        assert!(issuer.verify_signature(Some(root.public_key())).is_ok());
        for (cert, path_len) in [(&root, 1), (&issuer, 0)] {
            let bc = cert.basic_constraints().unwrap().unwrap().value;
            assert!(bc.ca);
            assert_eq!(bc.path_len_constraint, Some(path_len));
            assert!(cert.name_constraints().unwrap().unwrap().critical);
        }
    }

    #[test]
    fn openssl_refuses_a_name_outside_the_constraints() {
        let dir = ca_for("reg.example");
        for (name, accepted) in [("reg.example", true), ("www.paypal.com", false)] {
            let leaf = forged_leaf(dir.path(), name);
            let pem = format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, leaf.as_ref())
            );
            let leaf_path = dir.path().join(format!("{name}.crt"));
            std::fs::write(&leaf_path, pem).unwrap();
            let out = std::process::Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(dir.path().join(CA_CERT))
                .arg("-untrusted")
                .arg(dir.path().join(CA_ISSUER))
                .args(["-verify_hostname", name])
                .arg(&leaf_path)
                .output()
                .expect("openssl is needed for this test");
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.success(), accepted, "{name}: {text}");
            if !accepted {
                assert!(text.contains("permitted subtree violation"), "{text}");
            }
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
