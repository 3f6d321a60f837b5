//! Manifests and indexes as clients push them: the validation a push goes through (`Manifest::parse`, with each
//! `Content-Type` a client may send) and what the garbage collector later reads from the stored bytes
//! (`references`). No input panics; the same input always gets the same answer; every digest is a valid one and
//! foreign layers are among the blobs; an accepted manifest has the structure its media type says (an image: a
//! config, no child manifests; an index: child manifests, no config or layers) and no negative size; and the
//! collector sees everything a push accepted: each digest an accepted manifest references is among what
//! `references` keeps alive (else a collection would delete content a manifest needs).
#![no_main]

use berth_registry::oci::{media, Digest, Manifest, ManifestKind};
use berth_registry::store::gc::references;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let r = references(data);
    let again = references(data);
    assert_eq!(r.blobs, again.blobs);
    assert_eq!(r.children, again.children);
    assert_eq!(r.subject, again.subject);
    for d in r.blobs.iter().chain(&r.children).chain(r.subject.iter()) {
        assert_eq!(Digest::parse(&d.to_string()).as_ref(), Ok(d));
    }
    for f in &r.foreign {
        assert!(r.blobs.contains(f), "foreign layer {f} not among the blobs");
    }
    for ct in [
        None,
        Some(""),
        Some(media::OCI_MANIFEST),
        Some(media::OCI_INDEX),
        Some(media::DOCKER_MANIFEST),
        Some(media::DOCKER_LIST),
        Some("application/octet-stream"),
    ] {
        let parsed = Manifest::parse(data, ct);
        let again = Manifest::parse(data, ct);
        assert_eq!(parsed.is_ok(), again.is_ok());
        let Ok(m) = parsed else {
            continue;
        };
        match m.kind {
            ManifestKind::Image => {
                assert!(m.config.is_some(), "an image without a config accepted");
                assert!(matches!(
                    m.media_type.as_str(),
                    media::OCI_MANIFEST | media::DOCKER_MANIFEST
                ));
            }
            ManifestKind::Index => {
                assert!(m.config.is_none(), "an index with a config accepted");
                assert!(matches!(
                    m.media_type.as_str(),
                    media::OCI_INDEX | media::DOCKER_LIST
                ));
            }
        }
        let alive = |d: &Digest| {
            r.blobs.contains(d) || r.children.contains(d) || r.subject.as_ref() == Some(d)
        };
        for desc in m.config.iter().chain(&m.references).chain(m.subject.iter()) {
            assert!(desc.size >= 0, "negative size accepted");
            let d = Digest::parse(&desc.digest).expect("an accepted digest parses");
            assert!(
                alive(&d),
                "{ct:?}: the push accepted a reference to {d} that the collector does not see"
            );
        }
        if m.kind == ManifestKind::Index {
            for desc in &m.references {
                let d = Digest::parse(&desc.digest).unwrap();
                assert!(
                    r.children.contains(&d),
                    "child manifest {d} not a child for the collector"
                );
            }
        }
    }
});
