//! Notifications: registry:2's webhooks, made durable.
//!
//! A request that pushes, pulls, mounts or deletes attaches an event to its reply ([`crate::api::Reply`]);
//! before the reply goes out, the event is written to the [`spool`] (group-committed with the events of
//! concurrent requests, one atomic storage write per group). One delivery task per endpoint reads the spool
//! in order and POSTs registry:2's envelope, retrying with its threshold and back-off; its position is kept
//! in storage too, so a restart resumes where delivery stopped (at least once, in order per endpoint). A
//! slow or dead endpoint only makes its own backlog grow; the spool is bounded, and when full the oldest
//! events are dropped and counted, never a request blocked.

mod deliver;
pub mod spool;

use std::sync::Arc;

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::config::{Config, Endpoint, StorageDriver};
use crate::metrics::Metrics;
use crate::storage::Storage;

/// The envelope's content type (registry:2's).
pub const EVENTS_MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";
/// The media type registry:2 gives blob events.
pub const BLOB_MEDIA_TYPE: &str = "application/octet-stream";

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The envelope POSTed to an endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    /// The events, oldest first.
    pub events: Vec<Event>,
}

/// One event, as registry:2 writes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// A UUID.
    pub id: String,
    /// When it happened, RFC 3339 with nanoseconds.
    pub timestamp: String,
    /// `push`, `pull`, `mount` or `delete`.
    pub action: String,
    /// What it happened to.
    pub target: Target,
    /// The request that caused it.
    pub request: RequestRecord,
    /// Who sent that request.
    pub actor: Actor,
    /// The registry that saw it.
    pub source: Source,
}

/// What an event happened to.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// The content's media type (`application/octet-stream` for blobs).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// Its size.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Its digest.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// Its size again (registry:2 writes both).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub length: u64,
    /// The repository.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub repository: String,
    /// The repository a mounted blob came from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from_repository: String,
    /// Where the content is fetched (always by digest).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// The tag, when the request named one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    /// What a manifest references (`notifications.events.includereferences`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<serde_json::Value>,
}

/// The request behind an event.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestRecord {
    /// The request's id (`X-Request-Id`, else one of ours).
    pub id: String,
    /// The client: the first `X-Forwarded-For` address, else `X-Real-IP`, else the peer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
    /// The `Host` the client used.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// The HTTP method.
    pub method: String,
    /// The client's `User-Agent`.
    pub useragent: String,
}

/// Who caused an event.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Actor {
    /// The user berth-proxy authenticated (`X-Forwarded-User`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// The registry that saw an event.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Source {
    /// Host name and port of the registry.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
    /// A UUID made at each start of the process.
    #[serde(
        default,
        rename = "instanceID",
        skip_serializing_if = "String::is_empty"
    )]
    pub instance_id: String,
}

/// An event a handler attaches to its reply: the action and target; the request and source are added when
/// the reply goes out.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The action.
    pub action: &'static str,
    /// The target (its `url` is filled in from the request's base URL).
    pub target: Target,
    /// The path of `url` below the base (`/v2/<name>/blobs/<digest>`).
    pub path: String,
}

pub use crate::oci::uuid_v4 as uuid;

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The request record of a request, from its headers and the peer's address.
pub fn request_record(
    method: &http::Method,
    headers: &HeaderMap,
    peer: Option<std::net::SocketAddr>,
    request_id: &str,
) -> (RequestRecord, Actor) {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let ip = |v: &str| {
        v.trim()
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|_| v.trim().to_string())
    };
    let addr = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| ip(v.split(',').next().unwrap_or("")))
        .or_else(|| {
            headers
                .get("x-real-ip")
                .and_then(|v| v.to_str().ok())
                .and_then(ip)
        })
        .or_else(|| peer.map(|p| p.to_string()))
        .unwrap_or_default();
    (
        RequestRecord {
            id: request_id.to_string(),
            addr,
            host: text("host"),
            method: method.as_str().to_string(),
            useragent: text("user-agent"),
        },
        Actor {
            name: text("x-forwarded-user"),
        },
    )
}

/// Whether `endpoint` wants an event with this action and target media type.
pub fn wanted(endpoint: &Endpoint, action: &str, media_type: &str) -> bool {
    !endpoint.ignore.actions.iter().any(|a| a == action)
        && !endpoint
            .ignoredmediatypes
            .iter()
            .chain(endpoint.ignore.mediatypes.iter())
            .any(|m| m == media_type)
}

/// The notifier: present when at least one endpoint is configured.
pub struct Notifier {
    endpoints: Vec<Endpoint>,
    spool: Arc<spool::Spool>,
    source: Source,
    include_references: bool,
}

impl Notifier {
    /// Opens the spool (in `storage`, under `_berth/events/<node>/`) and starts one delivery task per active
    /// endpoint. `None` when no endpoint is configured.
    pub async fn start(
        config: &Config,
        port: u16,
        storage: Arc<dyn Storage>,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Arc<Notifier>>, crate::storage::StorageError> {
        let endpoints: Vec<Endpoint> = config.notifications.active().cloned().collect();
        if endpoints.is_empty() {
            return Ok(None);
        }
        let node = config.notifications.spool.node.clone().unwrap_or_else(|| {
            match config.storage.driver {
                StorageDriver::Filesystem => "local".into(),
                StorageDriver::S3 => hostname(),
            }
        });
        let names: Vec<String> = endpoints.iter().map(|e| e.name.clone()).collect();
        let spool = spool::Spool::open(
            storage,
            &node,
            &names,
            config.notifications.spool.maxevents,
            Arc::clone(&metrics),
        )
        .await?;
        let source = Source {
            addr: format!("{}:{port}", hostname()),
            instance_id: uuid(),
        };
        for (i, e) in endpoints.iter().enumerate() {
            deliver::spawn(e.clone(), i, Arc::clone(&spool), Arc::clone(&metrics));
        }
        tracing::info!(endpoints = ?names, node = %node, "notifications on");
        Ok(Some(Arc::new(Notifier {
            endpoints,
            spool,
            source,
            include_references: config.notifications.events.includereferences,
        })))
    }

    /// Whether manifests' events carry their references.
    pub fn include_references(&self) -> bool {
        self.include_references
    }

    /// Writes an event to the spool (durably) unless no endpoint wants it. A spool that cannot be written is
    /// logged and counted (`Errors`); the request it belongs to is not failed for it.
    pub async fn record(
        &self,
        pending: Pending,
        base_url: &str,
        request: RequestRecord,
        actor: Actor,
    ) {
        if !self
            .endpoints
            .iter()
            .any(|e| wanted(e, pending.action, &pending.target.media_type))
        {
            return;
        }
        let mut target = pending.target;
        if !pending.path.is_empty() {
            target.url = format!("{base_url}{}", pending.path);
        }
        let event = Event {
            id: uuid(),
            timestamp: now_rfc3339(),
            action: pending.action.to_string(),
            target,
            request,
            actor,
            source: self.source.clone(),
        };
        if let Err(e) = self.spool.append(event).await {
            tracing::error!(error = %e, "notification spool: cannot write an event; it is lost");
        }
    }

    /// Updates the spool gauges (at each scrape).
    pub fn refresh_metrics(&self) {
        self.spool.refresh_metrics();
    }

    /// Whether the spool is full (a health check).
    pub fn spool_full(&self) -> bool {
        self.spool.is_full()
    }
}

/// This machine's host name (`localhost` when it cannot be read).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_like_registry_2() {
        let e = Event {
            id: uuid(),
            timestamp: now_rfc3339(),
            action: "mount".into(),
            target: Target {
                media_type: BLOB_MEDIA_TYPE.into(),
                size: 3,
                length: 3,
                digest: "sha256:ab".into(),
                repository: "a/b".into(),
                from_repository: "c".into(),
                url: "https://h/v2/a/b/blobs/sha256:ab".into(),
                ..Target::default()
            },
            request: RequestRecord {
                id: "r1".into(),
                method: "POST".into(),
                ..RequestRecord::default()
            },
            actor: Actor::default(),
            source: Source {
                addr: "h:5000".into(),
                instance_id: "i".into(),
            },
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["target"]["mediaType"], BLOB_MEDIA_TYPE);
        assert_eq!(v["target"]["fromRepository"], "c");
        assert_eq!(v["source"]["instanceID"], "i");
        assert!(v["target"].get("tag").is_none());
        assert_eq!(v["actor"], serde_json::json!({}));
        assert_eq!(v["request"]["useragent"], "");
        let id = uuid();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }
}
