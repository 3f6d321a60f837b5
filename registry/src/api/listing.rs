//! Listings: tags, catalog, referrers, and the Docker v1 search over the catalog.

use berth_glob::{RepoFilter, PULL_FILTER_HEADER};
use http::header::LINK;
use http::{Request, StatusCode};

use super::{digest, param, query, App, Reply};
use crate::error::RegistryError;
use crate::linger::RequestBody;
use crate::oci::{media, RepoName};

/// Items strictly after `last`, at most `n`, and whether more follow.
fn number(q: &[(String, String)], key: &str) -> Result<Option<usize>, RegistryError> {
    match param(q, key) {
        None | Some("") => Ok(None),
        Some(v) => v.parse::<usize>().map(Some).map_err(|_| {
            RegistryError::BadRequest(format!("{key} must be a non-negative integer"))
        }),
    }
}

/// The repositories the caller may see, as berth-proxy says with its access rules (`Berth-Pull-Filter`); none
/// means all.
fn pull_filter(req: &Request<RequestBody>) -> Result<Option<RepoFilter>, RegistryError> {
    let Some(v) = req.headers().get(PULL_FILTER_HEADER) else {
        return Ok(None);
    };
    let text = v
        .to_str()
        .map_err(|_| RegistryError::BadRequest(format!("{PULL_FILTER_HEADER} is not text")))?;
    RepoFilter::parse(text)
        .map(Some)
        .map_err(|e| RegistryError::BadRequest(format!("{PULL_FILTER_HEADER}: {e}")))
}

fn next_link(path: &str, n: usize, last: &str) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("n", &n.to_string())
        .append_pair("last", last)
        .finish();
    format!("<{path}?{q}>; rel=\"next\"")
}

impl App {
    pub(super) async fn tags(
        &self,
        name: RepoName,
        req: &Request<RequestBody>,
    ) -> Result<Reply, RegistryError> {
        let q = query(req);
        if let Some(view) = param(&q, "berth") {
            return self.browse(name, req, view).await;
        }
        let n = number(&q, "n")?;
        // A mirrored repository lists the remote's tags; the stored ones while the remote is unreachable.
        let remote = match (self.mirrored(&name), &self.mirrors) {
            (Some((mirror, remote)), Some(mirrors)) => {
                mirrors.tags(&mirror, &remote, n, param(&q, "last")).await?
            }
            _ => None,
        };
        let (tags, more) = match remote {
            Some(page) => page,
            None => self.store.tags_page(&name, n, param(&q, "last")).await?,
        };
        if tags.is_empty() && !self.store.repo_exists(&name).await? {
            return Err(RegistryError::NameUnknown);
        }
        let mut reply = Reply::new(StatusCode::OK);
        if let (true, Some(n), Some(last)) = (more, n, tags.last()) {
            reply = reply.header(LINK, next_link(&format!("/v2/{name}/tags/list"), n, last));
        }
        Ok(reply.json(&serde_json::json!({"name": name.as_str(), "tags": tags})))
    }

    pub(super) async fn catalog(&self, req: &Request<RequestBody>) -> Result<Reply, RegistryError> {
        let q = query(req);
        let n = number(&q, "n")?;
        let filter = pull_filter(req)?;
        let (repos, more) = self
            .store
            .catalog_page_of(n, param(&q, "last"), filter.as_ref())
            .await?;
        let mut reply = Reply::new(StatusCode::OK);
        if let (true, Some(n), Some(last)) = (more, n, repos.last()) {
            reply = reply.header(LINK, next_link("/v2/_catalog", n, last));
        }
        Ok(reply.json(&serde_json::json!({ "repositories": repos })))
    }

    pub(super) async fn referrers(
        &self,
        name: RepoName,
        d: &str,
        req: &Request<RequestBody>,
    ) -> Result<Reply, RegistryError> {
        let d = digest(d)?;
        let q = query(req);
        let filter = param(&q, "artifactType").filter(|a| !a.is_empty());
        let manifests = self.store.referrers(&name, &d, filter).await?;
        let mut reply = Reply::new(StatusCode::OK);
        if filter.is_some() {
            reply = reply.header("oci-filters-applied", "artifactType");
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": manifests,
        });
        Ok(reply
            .json(&index)
            .header(http::header::CONTENT_TYPE, media::OCI_INDEX))
    }

    /// `GET /v1/search?q=&n=&page=`: the Docker v1 search API over the catalog, so `docker search` works.
    pub(super) async fn v1_search(
        &self,
        req: &Request<RequestBody>,
    ) -> Result<Reply, RegistryError> {
        let q = query(req);
        let term = param(&q, "q").unwrap_or("").to_ascii_lowercase();
        let size = number(&q, "n")?.unwrap_or(25).clamp(1, 100);
        let page_no = number(&q, "page")?.unwrap_or(1).max(1);
        let filter = pull_filter(req)?;
        let hits: Vec<String> = self
            .store
            .catalog_of(filter.as_ref())
            .await?
            .into_iter()
            .filter(|n| n.contains(term.as_str()))
            .collect();
        let total = hits.len();
        let results: Vec<serde_json::Value> = hits
            .into_iter()
            .skip((page_no - 1).saturating_mul(size))
            .take(size)
            .map(|name| {
                serde_json::json!({
                    "name": name,
                    "description": "",
                    "star_count": 0,
                    "is_official": false,
                    "is_automated": false,
                })
            })
            .collect();
        Ok(Reply::new(StatusCode::OK).json(&serde_json::json!({
            "num_pages": total.div_ceil(size).max(1),
            "num_results": total,
            "page": page_no,
            "page_size": size,
            "query": param(&q, "q").unwrap_or(""),
            "results": results,
        })))
    }
}
