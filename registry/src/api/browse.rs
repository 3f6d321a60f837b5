//! The browsing view of a repository's tags, for berth-proxy's web interface: an extension of the tag list
//! (`GET /v2/NAME/tags/list?berth=summary|details`), so it goes through the same route, the same access rules
//! and the same storage as every pull. It reads the registry's usual layout and writes nothing.
//!
//! - `berth=info`: `{"name", "tags": COUNT, "deletes": BOOL}`, without reading any tag.
//! - `berth=summary`: `{"name", "tags": COUNT, "pushed": UNIX|null, "deletes": BOOL}`: how many tags and
//!   when the last push of a tag happened.
//! - `berth=details&sort=name|-name|pushed|-pushed&offset=O&n=N&q=TEXT`: one page (at most 100) of the tags
//!   whose name holds `q`, in that order, each with its digest, media type, size (config and layers, summed
//!   over an index's platforms), platforms and push time: `{"name", "total", "deletes", "tags": [...]}`.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{Request, StatusCode};
use serde::Deserialize;

use super::{param, query, App, Reply};
use crate::error::RegistryError;
use crate::linger::RequestBody;
use crate::oci::{Digest, RepoName, Tag};

/// The longest page.
const MAX_PAGE: usize = 100;
/// The largest config read for its platform.
const CONFIG_LIMIT: u64 = 4 * 1024 * 1024;

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl Platform {
    fn label(&self) -> Option<String> {
        if self.os.is_empty() || self.os == "unknown" {
            return None;
        }
        Some(match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", self.os, self.architecture),
            _ => format!("{}/{}", self.os, self.architecture),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Desc {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

/// Only what the view needs of a manifest, read leniently.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Loose {
    #[serde(default)]
    config: Option<Desc>,
    #[serde(default)]
    layers: Vec<Desc>,
    #[serde(default)]
    manifests: Option<Vec<Desc>>,
    #[serde(default)]
    artifact_type: Option<String>,
}

fn unix(t: Option<SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

/// What a tag's row shows.
struct Row {
    digest: String,
    media_type: String,
    size: Option<u64>,
    platforms: Vec<String>,
    artifact_type: Option<String>,
}

impl App {
    /// Answers the tag list's `berth` extension (see the module's documentation).
    pub(super) async fn browse(
        &self,
        name: RepoName,
        req: &Request<RequestBody>,
        view: &str,
    ) -> Result<Reply, RegistryError> {
        let q = query(req);
        let names = self.store.tag_names(&name).await?;
        if names.is_empty() && !self.store.repo_exists(&name).await? {
            return Err(RegistryError::NameUnknown);
        }
        let deletes = self.config.storage.delete_enabled && self.mirrored(&name).is_none();
        match view {
            "info" => Ok(Reply::new(StatusCode::OK).json(&serde_json::json!({
                "name": name.as_str(),
                "tags": names.len(),
                "deletes": deletes,
            }))),
            "summary" => {
                let times = self.store.tag_times(&name, &names).await?;
                let pushed = times.into_iter().flatten().max();
                Ok(Reply::new(StatusCode::OK).json(&serde_json::json!({
                    "name": name.as_str(),
                    "tags": names.len(),
                    "pushed": unix(pushed),
                    "deletes": deletes,
                })))
            }
            "details" => {
                let filter = param(&q, "q").unwrap_or("");
                let number = |key: &str, default: usize| match param(&q, key) {
                    None | Some("") => Ok(default),
                    Some(v) => v.parse::<usize>().map_err(|_| {
                        RegistryError::BadRequest(format!("{key} must be a non-negative integer"))
                    }),
                };
                let offset = number("offset", 0)?;
                let n = number("n", 50)?.clamp(1, MAX_PAGE);
                let mut tags: Vec<&String> = names.iter().filter(|t| t.contains(filter)).collect();
                let sort = param(&q, "sort").unwrap_or("name");
                let mut times = None;
                match sort {
                    "name" => {}
                    "-name" => tags.reverse(),
                    "pushed" | "-pushed" => {
                        let owned: Vec<String> = tags.iter().map(|t| (*t).clone()).collect();
                        let t = self.store.tag_times(&name, &owned).await?;
                        let mut both: Vec<(&String, Option<SystemTime>)> =
                            tags.iter().copied().zip(t).collect();
                        // Newest first for `-pushed`; ties in name order.
                        both.sort_by(|a, b| {
                            let by_time = a.1.cmp(&b.1);
                            let by_time = if sort == "-pushed" {
                                by_time.reverse()
                            } else {
                                by_time
                            };
                            by_time.then_with(|| a.0.cmp(b.0))
                        });
                        tags = both.iter().map(|(t, _)| *t).collect();
                        times = Some(both.into_iter().map(|(_, t)| t).collect::<Vec<_>>());
                    }
                    other => {
                        return Err(RegistryError::BadRequest(format!(
                            "sort must be name, -name, pushed or -pushed, not {other:?}"
                        )))
                    }
                }
                let total = tags.len();
                let start = offset.min(total);
                let end = start.saturating_add(n).min(total);
                let page: Vec<String> = tags[start..end].iter().map(|t| (*t).clone()).collect();
                let pushed = match times {
                    Some(t) => t[start..end].to_vec(),
                    None => self.store.tag_times(&name, &page).await?,
                };
                let mut rows = Vec::with_capacity(page.len());
                for (tag, pushed) in page.iter().zip(pushed) {
                    let Ok(parsed) = tag.parse::<Tag>() else {
                        continue;
                    };
                    // A tag deleted since the listing is left out.
                    let Some(d) = self.store.serve_tag(&name, &parsed).await? else {
                        continue;
                    };
                    let row = self.row(&name, &d).await?;
                    rows.push(serde_json::json!({
                        "tag": tag,
                        "digest": row.digest,
                        "mediaType": row.media_type,
                        "artifactType": row.artifact_type,
                        "size": row.size,
                        "platforms": row.platforms,
                        "pushed": unix(pushed),
                    }));
                }
                Ok(Reply::new(StatusCode::OK).json(&serde_json::json!({
                    "name": name.as_str(),
                    "total": total,
                    "deletes": deletes,
                    "tags": rows,
                })))
            }
            other => Err(RegistryError::BadRequest(format!(
                "berth must be info, summary or details, not {other:?}"
            ))),
        }
    }

    /// A manifest's row: its size and platforms, from its config (an image) or its children (an index).
    async fn row(&self, name: &RepoName, d: &Digest) -> Result<Row, RegistryError> {
        let mut row = Row {
            digest: d.to_string(),
            media_type: String::new(),
            size: None,
            platforms: Vec::new(),
            artifact_type: None,
        };
        // What cannot be read (gone meanwhile, too large, not fetched yet by a mirror) shows as unknown: one
        // odd manifest never fails the page.
        let Ok(Some(m)) = self.store.serve_manifest(name, d).await else {
            return Ok(row);
        };
        row.media_type = m.media_type.clone();
        let Ok(loose) = serde_json::from_slice::<Loose>(&m.bytes) else {
            return Ok(row);
        };
        row.artifact_type = loose.artifact_type.clone();
        if let Some(children) = &loose.manifests {
            let mut total = Some(0u64);
            for child in children {
                let label = child.platform.as_ref().and_then(Platform::label);
                let Some(label) = label else {
                    // Attestations and other children without a platform count for nothing here.
                    continue;
                };
                row.platforms.push(label);
                let child_size = match Digest::parse(&child.digest) {
                    Ok(cd) => match self.store.serve_manifest(name, &cd).await {
                        Ok(Some(cm)) => serde_json::from_slice::<Loose>(&cm.bytes)
                            .ok()
                            .filter(|c| c.manifests.is_none())
                            .map(|c| image_size(&c)),
                        _ => None,
                    },
                    Err(_) => None,
                };
                total = total.zip(child_size).map(|(a, b)| a.saturating_add(b));
            }
            row.size = total;
            return Ok(row);
        }
        row.size = Some(image_size(&loose));
        if let Some(config) = &loose.config {
            if row.artifact_type.is_none() && !is_image_config(config.media_type.as_deref()) {
                row.artifact_type = config.media_type.clone();
            }
            if is_image_config(config.media_type.as_deref()) && config.size <= CONFIG_LIMIT {
                if let Ok(cd) = Digest::parse(&config.digest) {
                    if let Ok(Some(bytes)) = self.store.serve_small_blob(&cd, CONFIG_LIMIT).await {
                        if let Ok(p) = serde_json::from_slice::<Platform>(&bytes) {
                            row.platforms.extend(p.label());
                        }
                    }
                }
            }
        }
        Ok(row)
    }
}

fn is_image_config(media_type: Option<&str>) -> bool {
    matches!(
        media_type,
        Some("application/vnd.oci.image.config.v1+json")
            | Some("application/vnd.docker.container.image.v1+json")
    )
}

/// Config plus layers: what a pull of the image moves (compressed).
fn image_size(m: &Loose) -> u64 {
    m.config
        .iter()
        .chain(m.layers.iter())
        .fold(0u64, |acc, d| acc.saturating_add(d.size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_labels() {
        let p: Platform =
            serde_json::from_str(r#"{"os":"linux","architecture":"arm","variant":"v7"}"#).unwrap();
        assert_eq!(p.label().as_deref(), Some("linux/arm/v7"));
        let p: Platform =
            serde_json::from_str(r#"{"os":"unknown","architecture":"unknown"}"#).unwrap();
        assert_eq!(p.label(), None);
    }

    #[test]
    fn sizes_add_config_and_layers() {
        let m: Loose = serde_json::from_str(
            r#"{"config":{"digest":"sha256:a","size":10},"layers":[{"digest":"sha256:b","size":5},{"digest":"sha256:c","size":7}]}"#,
        )
        .unwrap();
        assert_eq!(image_size(&m), 22);
    }
}
