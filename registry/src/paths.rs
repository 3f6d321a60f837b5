//! The only place that turns parsed names and digests into storage keys: registry:2's layout.
//!
//! ```text
//! docker/registry/v2/blobs/<alg>/<hex[0..2]>/<hex>/data
//! docker/registry/v2/repositories/<name>/_layers/<alg>/<hex>/link
//! docker/registry/v2/repositories/<name>/_manifests/revisions/<alg>/<hex>/link
//! docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link
//! docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/index/<alg>/<hex>/link
//! docker/registry/v2/repositories/<name>/_uploads/<id>/{data,startedat}
//! ```

use crate::oci::{Digest, RepoName, Tag, UploadId};

const ROOT: &str = "docker/registry/v2";

/// `blobs/` prefix.
pub fn blobs_root() -> String {
    format!("{ROOT}/blobs")
}

/// Content of a blob.
pub fn blob_data(d: &Digest) -> String {
    format!(
        "{ROOT}/blobs/{}/{}/{}/data",
        d.algorithm().as_str(),
        &d.hex()[..2],
        d.hex()
    )
}

/// The folder of a blob.
pub fn blob_dir(d: &Digest) -> String {
    format!(
        "{ROOT}/blobs/{}/{}/{}",
        d.algorithm().as_str(),
        &d.hex()[..2],
        d.hex()
    )
}

/// `repositories/` prefix; repository names (which may contain `/`) live below it.
pub fn repositories_root() -> String {
    format!("{ROOT}/repositories")
}

/// A repository's folder.
pub fn repo_dir(name: &RepoName) -> String {
    format!("{ROOT}/repositories/{name}")
}

/// Link that makes a blob part of a repository.
pub fn layer_link(name: &RepoName, d: &Digest) -> String {
    format!(
        "{}/_layers/{}/{}/link",
        repo_dir(name),
        d.algorithm().as_str(),
        d.hex()
    )
}

/// Folder of a layer link.
pub fn layer_dir(name: &RepoName, d: &Digest) -> String {
    format!(
        "{}/_layers/{}/{}",
        repo_dir(name),
        d.algorithm().as_str(),
        d.hex()
    )
}

/// Folder holding the revisions of one algorithm.
pub fn revisions_dir(name: &RepoName, alg: &str) -> String {
    format!("{}/_manifests/revisions/{alg}", repo_dir(name))
}

/// Link that makes a manifest a revision of a repository.
pub fn revision_link(name: &RepoName, d: &Digest) -> String {
    format!(
        "{}/_manifests/revisions/{}/{}/link",
        repo_dir(name),
        d.algorithm().as_str(),
        d.hex()
    )
}

/// Folder of a revision link.
pub fn revision_dir(name: &RepoName, d: &Digest) -> String {
    format!(
        "{}/_manifests/revisions/{}/{}",
        repo_dir(name),
        d.algorithm().as_str(),
        d.hex()
    )
}

/// The name of the marker a mirror writes in each repository it fetches into (see [`mirror_marker`]).
pub const MIRROR_MARKER: &str = "_berth_mirror";

/// A repository's mirror marker: written when a mirror first stores a manifest there. The collector expires
/// mirrored content only in repositories that have it (registry:2 ignores the file).
pub fn mirror_marker(name: &RepoName) -> String {
    format!("{}/{MIRROR_MARKER}", repo_dir(name))
}

/// Folder holding the tags.
pub fn tags_dir(name: &RepoName) -> String {
    format!("{}/_manifests/tags", repo_dir(name))
}

/// Folder of one tag.
pub fn tag_dir(name: &RepoName, tag: &Tag) -> String {
    format!("{}/_manifests/tags/{tag}", repo_dir(name))
}

/// The digest a tag points at now.
pub fn tag_current_link(name: &RepoName, tag: &Tag) -> String {
    format!("{}/current/link", tag_dir(name, tag))
}

/// Every digest a tag ever pointed at.
pub fn tag_index_link(name: &RepoName, tag: &Tag, d: &Digest) -> String {
    format!(
        "{}/index/{}/{}/link",
        tag_dir(name, tag),
        d.algorithm().as_str(),
        d.hex()
    )
}

/// Folder of an upload session.
pub fn upload_dir(name: &RepoName, id: &UploadId) -> String {
    format!("{}/_uploads/{}", repo_dir(name), id.as_str())
}

/// Data of an upload session.
pub fn upload_data(name: &RepoName, id: &UploadId) -> String {
    format!("{}/data", upload_dir(name, id))
}

/// Start time of an upload session (RFC 3339, as registry:2 writes it).
pub fn upload_started_at(name: &RepoName, id: &UploadId) -> String {
    format!("{}/startedat", upload_dir(name, id))
}

/// Folder of one digest in a tag's history.
pub fn tag_index_dir(name: &RepoName, tag: &Tag, d: &Digest) -> String {
    format!(
        "{}/index/{}/{}",
        tag_dir(name, tag),
        d.algorithm().as_str(),
        d.hex()
    )
}

/// Folder of a repository found in storage by a walk (its name is not parsed: the collector must clean the
/// links of every folder it marked, whatever its name).
pub fn stored_repo_dir(repo: &str) -> String {
    format!("{ROOT}/repositories/{repo}")
}

/// The collector's own objects, beside (not inside) registry:2's tree.
pub const GC_ROOT: &str = "_berth/gc";

/// Folder of the collector leases, one object per epoch.
pub fn gc_leases() -> String {
    format!("{GC_ROOT}/lease")
}

/// The lease of one collector epoch (the number padded so names sort like numbers).
pub fn gc_lease(epoch: u64) -> String {
    format!("{GC_ROOT}/lease/{epoch:020}")
}

/// Folder of the sweep markers, one per collector epoch.
pub fn gc_sweeps() -> String {
    format!("{GC_ROOT}/sweep")
}

/// What the collector of one epoch is about to delete; pushes read every marker.
pub fn gc_sweep(epoch: u64) -> String {
    format!("{GC_ROOT}/sweep/{epoch:020}")
}

/// Folder of the pins: the digests each manifest push in flight depends on.
pub fn gc_pins() -> String {
    format!("{GC_ROOT}/pins")
}

/// One pin, named by a random id.
pub fn gc_pin(id: &str) -> String {
    format!("{GC_ROOT}/pins/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_registry_v2() {
        let n: RepoName = "library/app".parse().unwrap();
        let d = Digest::sha256_of(b"");
        assert_eq!(
            blob_data(&d),
            "docker/registry/v2/blobs/sha256/e3/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/data"
        );
        assert_eq!(
            layer_link(&n, &d),
            format!(
                "docker/registry/v2/repositories/library/app/_layers/sha256/{}/link",
                d.hex()
            )
        );
        let t: Tag = "latest".parse().unwrap();
        assert_eq!(
            tag_current_link(&n, &t),
            "docker/registry/v2/repositories/library/app/_manifests/tags/latest/current/link"
        );
    }
}
