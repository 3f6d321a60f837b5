//! Parsed OCI newtypes: digests, repository names, tags, references, upload ids, and manifest parsing.
//!
//! Everything that reaches storage went through one of these parsers first (DESIGN.md: "parse, don't
//! validate"), so a name or digest that does not match the spec's grammar never becomes a path.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// A digest algorithm the registry can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// `sha256`, 64 lowercase hex characters.
    Sha256,
    /// `sha512`, 128 lowercase hex characters.
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as it appears in digests and storage paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A content digest `<algorithm>:<lowercase hex>` with a known algorithm and a well-formed value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestError {
    /// Not of the form `algorithm:encoded`, or the encoded part is not valid for the algorithm.
    Invalid,
    /// Well-formed, but an algorithm this registry does not verify.
    UnsupportedAlgorithm,
}

impl Digest {
    /// The digest's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex encoding of the hash.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest::of(Algorithm::Sha256, bytes)
    }

    /// The digest of `bytes` with `algorithm`.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(algorithm);
        h.update(bytes);
        h.finish()
    }

    /// Parses a digest, distinguishing malformed digests from unsupported algorithms.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let (alg, enc) = s.split_once(':').ok_or(DigestError::Invalid)?;
        // OCI grammar: algorithm-component ([a-z0-9]+) separated by [+._-]; encoded [a-zA-Z0-9=_-]+.
        let alg_ok = !alg.is_empty()
            && alg.split(['+', '.', '_', '-']).all(|c| {
                !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        let enc_ok = !enc.is_empty()
            && enc
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'=' || b == b'_' || b == b'-');
        if !alg_ok || !enc_ok {
            return Err(DigestError::Invalid);
        }
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(DigestError::UnsupportedAlgorithm),
        };
        if enc.len() != algorithm.hex_len()
            || !enc
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::Invalid);
        }
        Ok(Digest {
            algorithm,
            hex: enc.to_string(),
        })
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

/// An incremental hasher for one algorithm. It runs on ring's digest code, which uses the processor's
/// vector instructions (about twice as fast as a portable implementation where there is no SHA extension).
#[derive(Clone)]
pub struct Hasher {
    algorithm: Algorithm,
    context: ring::digest::Context,
}

impl Hasher {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Hasher {
        let ring_alg = match algorithm {
            Algorithm::Sha256 => &ring::digest::SHA256,
            Algorithm::Sha512 => &ring::digest::SHA512,
        };
        Hasher {
            algorithm,
            context: ring::digest::Context::new(ring_alg),
        }
    }

    /// The algorithm this hasher computes.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.context.update(bytes);
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        Digest {
            algorithm: self.algorithm,
            hex: hex::encode(self.context.finish().as_ref()),
        }
    }
}

/// A repository name matching the spec's grammar, at most 255 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

pub use berth_glob::MAX_NAME_LEN;

impl RepoName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RepoName {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        if !berth_glob::valid_repo_name(s) {
            return Err(());
        }
        Ok(RepoName(s.to_string()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let b = s.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
        if !first_ok
            || b.len() > 128
            || !b[1..]
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        {
            return Err(());
        }
        Ok(Tag(s.to_string()))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// By tag.
    Tag(Tag),
    /// By digest.
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// A random UUID (version 4), as text.
pub fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// An upload session id: a lowercase hyphenated UUID as registry:2 makes them (we accept any
/// `[a-zA-Z0-9-]{1,64}` so sessions started by registry:2 can be resumed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    /// A fresh random id (UUID v4 form).
    pub fn generate() -> UploadId {
        UploadId(uuid_v4())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UploadId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        if s.is_empty()
            || s.len() > 64
            || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(());
        }
        Ok(UploadId(s.to_string()))
    }
}

/// Manifest media types.
pub mod media {
    /// Docker image manifest v2 schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker schema 1 (signed), refused on push.
    pub const DOCKER_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
    /// Docker schema 1 (unsigned), refused on push.
    pub const DOCKER_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
}

/// A content descriptor as found in manifests.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(default)]
    pub media_type: Option<String>,
    /// Digest of the referenced content (kept as text; parsed when used).
    pub digest: String,
    /// Size in bytes.
    pub size: i64,
    /// Artifact type (indexes' children, referrers).
    #[serde(default)]
    pub artifact_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    subject: Option<Descriptor>,
    #[serde(default)]
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Whether a manifest is an image manifest or an index of manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// Docker schema 2 manifest or OCI image manifest: config plus layers.
    Image,
    /// Docker manifest list or OCI image index: a list of manifests.
    Index,
}

/// A parsed manifest: what validation, content type and referrers need.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The media type: the body's `mediaType`, else the one implied by its structure.
    pub media_type: String,
    /// Image or index.
    pub kind: ManifestKind,
    /// `artifactType` of the manifest, if any.
    pub artifact_type: Option<String>,
    /// The config descriptor (images).
    pub config: Option<Descriptor>,
    /// Layers (images) or child manifests (indexes).
    pub references: Vec<Descriptor>,
    /// The `subject` descriptor, if any.
    pub subject: Option<Descriptor>,
    /// Annotations, if any.
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Manifest {
    /// Parses manifest bytes. `content_type` is the request's `Content-Type` without parameters, if any.
    /// The error is a message for MANIFEST_INVALID.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, String> {
        let raw: RawManifest = serde_json::from_slice(bytes)
            .map_err(|e| format!("manifest is not valid JSON: {e}"))?;
        let media_type = match (&raw.media_type, content_type) {
            (Some(body), Some(ct)) if !ct.is_empty() && body != ct => {
                return Err(format!(
                    "mediaType {body:?} in the manifest does not match Content-Type {ct:?}"
                ))
            }
            (Some(body), _) => body.clone(),
            (None, Some(ct)) if is_manifest_type(ct) => ct.to_string(),
            (None, _) => {
                if raw.manifests.is_some() {
                    media::OCI_INDEX.to_string()
                } else {
                    media::OCI_MANIFEST.to_string()
                }
            }
        };
        if raw.schema_version != Some(2) {
            return Err("schemaVersion must be 2".into());
        }
        let kind = match media_type.as_str() {
            media::DOCKER_MANIFEST | media::OCI_MANIFEST => ManifestKind::Image,
            media::DOCKER_LIST | media::OCI_INDEX => ManifestKind::Index,
            other => return Err(format!("unsupported manifest media type {other:?}")),
        };
        let (config, references) = match kind {
            ManifestKind::Image => {
                let config = raw.config.ok_or("image manifest has no config")?;
                if raw.manifests.is_some() {
                    return Err("image manifest must not have manifests".into());
                }
                (Some(config), raw.layers.unwrap_or_default())
            }
            ManifestKind::Index => {
                if raw.config.is_some() || raw.layers.is_some() {
                    return Err("index must not have config or layers".into());
                }
                (None, raw.manifests.ok_or("index has no manifests")?)
            }
        };
        for d in config
            .iter()
            .chain(references.iter())
            .chain(raw.subject.iter())
        {
            Digest::parse(&d.digest)
                .map_err(|_| format!("invalid digest {:?} in descriptor", d.digest))?;
            if d.size < 0 {
                return Err("descriptor size must not be negative".into());
            }
        }
        Ok(Manifest {
            media_type,
            kind,
            artifact_type: raw.artifact_type,
            config,
            references,
            subject: raw.subject,
            annotations: raw.annotations,
        })
    }

    /// The `artifactType` a referrers listing shows for this manifest.
    pub fn referrer_artifact_type(&self) -> Option<String> {
        match (&self.artifact_type, self.kind) {
            (Some(a), _) if !a.is_empty() => Some(a.clone()),
            (_, ManifestKind::Image) => self.config.as_ref().and_then(|c| c.media_type.clone()),
            (_, ManifestKind::Index) => None,
        }
    }
}

/// Stored manifest bytes as a JSON value, read as registry:2's decoder reads them: bytes that are not UTF-8 are
/// taken as U+FFFD instead of making the whole document unreadable. `Null` when it is not JSON.
pub fn json_lenient(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_str(&String::from_utf8_lossy(bytes)).unwrap_or_default()
}

/// The digests of a manifest's descriptors exactly as validation reads them ([`Manifest::parse`] without its
/// checks): config, layers, child manifests and subject, as written. `None` when that reading fails. The
/// collector adds these to what it reads leniently, so that anything a push accepted keeps what it references,
/// whatever a lenient reading makes of the same bytes (a string that is not UTF-8 in a field validation skips
/// fails the lenient one).
/// `text` is the bytes as [`json_lenient`] reads them (`String::from_utf8_lossy`).
pub fn declared_digests(text: &str) -> Option<(Vec<String>, Vec<String>, Option<String>)> {
    let raw: RawManifest = serde_json::from_str(text).ok()?;
    let blobs = raw
        .config
        .into_iter()
        .chain(raw.layers.unwrap_or_default())
        .map(|d| d.digest)
        .collect();
    let children = raw
        .manifests
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.digest)
        .collect();
    Some((blobs, children, raw.subject.map(|d| d.digest)))
}

/// Whether `ct` names a manifest type this registry stores.
pub fn is_manifest_type(ct: &str) -> bool {
    matches!(
        ct,
        media::DOCKER_MANIFEST | media::DOCKER_LIST | media::OCI_MANIFEST | media::OCI_INDEX
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        assert_eq!(d, Digest::sha256_of(b""));
        assert_eq!(Digest::parse("sha256:abc"), Err(DigestError::Invalid));
        assert_eq!(Digest::parse("sha256:../etc"), Err(DigestError::Invalid));
        assert_eq!(
            Digest::parse("md5:abcd"),
            Err(DigestError::UnsupportedAlgorithm)
        );
        assert_eq!(Digest::parse("nocolon"), Err(DigestError::Invalid));
        let upper = format!("sha256:{}", "A".repeat(64));
        assert_eq!(Digest::parse(&upper), Err(DigestError::Invalid));
        // The incremental hasher agrees with an independent implementation, across update boundaries.
        use sha2::Digest as _;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut h = Hasher::new(Algorithm::Sha256);
        for part in data.chunks(7_777) {
            h.update(part);
        }
        assert_eq!(h.finish().hex(), hex::encode(sha2::Sha256::digest(&data)));
        assert_eq!(
            Digest::of(Algorithm::Sha512, &data).hex(),
            hex::encode(sha2::Sha512::digest(&data))
        );
        let s512 = Digest::of(Algorithm::Sha512, b"x");
        assert_eq!(Digest::parse(&s512.to_string()).unwrap(), s512);
    }

    #[test]
    fn names() {
        for ok in ["a", "library/ubuntu", "a.b_c__d---e/f", "x0/y1/z2"] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "a..b", "a___b", "-a", "a-", "..", "a/../b", "a%2e",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad}");
        }
        assert!("a".repeat(256).parse::<RepoName>().is_err());
        assert!("a".repeat(255).parse::<RepoName>().is_ok());
    }

    #[test]
    fn tags() {
        for ok in ["latest", "_x", "v1.2.3-rc_1", &"a".repeat(128)] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"a".repeat(129)] {
            assert!(bad.parse::<Tag>().is_err(), "{bad}");
        }
    }

    #[test]
    fn manifests() {
        let d = Digest::sha256_of(b"x");
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"a/b","digest":"{d}","size":1}},"layers":[]}}"#,
            media::OCI_MANIFEST
        );
        let p = Manifest::parse(m.as_bytes(), Some(media::OCI_MANIFEST)).unwrap();
        assert_eq!(p.kind, ManifestKind::Image);
        assert_eq!(p.referrer_artifact_type().as_deref(), Some("a/b"));
        assert!(Manifest::parse(m.as_bytes(), Some(media::DOCKER_MANIFEST)).is_err());
        assert!(Manifest::parse(b"{not json", None).is_err());
        let idx = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{d}","size":1}}]}}"#);
        assert_eq!(
            Manifest::parse(idx.as_bytes(), None).unwrap().media_type,
            media::OCI_INDEX
        );
    }

    /// Random and mutated inputs never panic the parsers that read untrusted bytes.
    #[test]
    fn parsers_survive_random_input() {
        let seeds: &[&[u8]] = &[
            b"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            b"library/ubuntu",
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"digest":"sha256:00","size":-1}]}"#,
        ];
        for i in 0..20_000u32 {
            let mut input: Vec<u8> = if i % 2 == 0 {
                (0..rand::random::<u8>() % 200)
                    .map(|_| rand::random::<u8>())
                    .collect()
            } else {
                seeds[i as usize % seeds.len()].to_vec()
            };
            for _ in 0..(i % 5) {
                if !input.is_empty() {
                    let at = rand::random::<usize>() % input.len();
                    input[at] = rand::random::<u8>();
                }
            }
            let text = String::from_utf8_lossy(&input);
            let _ = Digest::parse(&text);
            let _ = text.parse::<RepoName>();
            let _ = text.parse::<Tag>();
            let _ = text.parse::<UploadId>();
            let _ = Manifest::parse(&input, Some(media::OCI_MANIFEST));
            let _ = Manifest::parse(&input, None);
        }
    }

    #[test]
    fn upload_ids() {
        let id = UploadId::generate();
        assert_eq!(id.as_str().len(), 36);
        assert!(id.as_str().parse::<UploadId>().is_ok());
        assert!("../x".parse::<UploadId>().is_err());
    }
}
