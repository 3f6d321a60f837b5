//! One delivery task per endpoint: reads the spool in order and POSTs envelopes, retrying like registry:2
//! (`threshold` attempts in a row, then one attempt per `backoff`) until the endpoint takes them.

use std::sync::Arc;
use std::time::Duration;

use super::spool::{BatchError, Pos, Spool};
use super::{wanted, Envelope, Event, EVENTS_MEDIA_TYPE};
use crate::config::{parse_duration, Endpoint};
use crate::metrics::Metrics;

/// Most events in one envelope.
const ENVELOPE_MAX: usize = 64;

/// Starts the delivery task of endpoint `i`.
pub fn spawn(endpoint: Endpoint, i: usize, spool: Arc<Spool>, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        let timeout = parse_duration(&endpoint.timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(1));
        let backoff = parse_duration(&endpoint.backoff)
            .ok()
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(1));
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, values) in &endpoint.headers {
            for v in values {
                if let (Ok(n), Ok(v)) = (
                    reqwest::header::HeaderName::try_from(name.as_str()),
                    reqwest::header::HeaderValue::try_from(v.as_str()),
                ) {
                    headers.append(n, v);
                }
            }
        }
        let client = match reqwest::Client::builder()
            .timeout(timeout)
            .default_headers(headers)
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(endpoint = %endpoint.name, error = %e, "notifications: no HTTP client");
                return;
            }
        };
        let sink = Sink {
            endpoint,
            client,
            threshold: 0,
            backoff,
            failures: 0,
            metrics,
        };
        sink.run(i, spool).await;
    });
}

struct Sink {
    endpoint: Endpoint,
    client: reqwest::Client,
    threshold: u32,
    backoff: Duration,
    failures: u32,
    metrics: Arc<Metrics>,
}

impl Sink {
    async fn run(mut self, i: usize, spool: Arc<Spool>) {
        self.threshold = self.endpoint.threshold.max(1);
        loop {
            let (seq, count, start) = match spool.next_batch(i) {
                Ok(next) => next,
                Err(written) => {
                    spool.wait_past(written).await;
                    continue;
                }
            };
            let events = match spool.read_batch(seq, count).await {
                Ok(e) => e,
                Err(BatchError::Lost(why)) => {
                    if spool.cursor(i).seq <= seq {
                        tracing::error!(endpoint = %self.endpoint.name, "notifications: {why}; its events are skipped");
                        spool.skip_lost(i, seq, count).await;
                    }
                    continue;
                }
                Err(BatchError::Storage(e)) => {
                    tracing::warn!(endpoint = %self.endpoint.name, error = %e, "notifications: cannot read the spool");
                    tokio::time::sleep(self.backoff).await;
                    continue;
                }
            };
            let mut index = start as usize;
            while index < events.len() {
                let mut end = index;
                let mut group: Vec<&Event> = Vec::new();
                while end < events.len() && group.len() < ENVELOPE_MAX {
                    let e = &events[end];
                    if wanted(&self.endpoint, &e.action, &e.target.media_type) {
                        group.push(e);
                    }
                    end += 1;
                }
                if !group.is_empty() {
                    let here = Pos {
                        seq,
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                    };
                    if !self.deliver(&group, &spool, i, here).await {
                        // The spool dropped these while the endpoint refused them.
                        break;
                    }
                }
                index = end;
                if index < events.len() {
                    spool
                        .advance(
                            i,
                            Pos {
                                seq,
                                index: u32::try_from(index).unwrap_or(u32::MAX),
                            },
                        )
                        .await;
                }
            }
            spool
                .advance(
                    i,
                    Pos {
                        seq: seq + 1,
                        index: 0,
                    },
                )
                .await;
        }
    }

    /// Sends one envelope until the endpoint takes it; false when the spool dropped it meanwhile.
    async fn deliver(&mut self, group: &[&Event], spool: &Spool, i: usize, here: Pos) -> bool {
        let name = self.endpoint.name.as_str();
        let n = group.len() as u64;
        self.metrics
            .notify_events
            .with_label_values(&[name, "Events"])
            .inc_by(n);
        let envelope = Envelope {
            events: group.iter().map(|e| (*e).clone()).collect(),
        };
        let body = match serde_json::to_vec_pretty(&envelope) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(endpoint = %name, error = %e, "notifications: cannot encode events");
                return true;
            }
        };
        loop {
            if spool.cursor(i) > here {
                return false;
            }
            if self.failures >= self.threshold {
                tokio::time::sleep(self.backoff).await;
                if spool.cursor(i) > here {
                    return false;
                }
            }
            let sent = self
                .client
                .post(&self.endpoint.url)
                .header(reqwest::header::CONTENT_TYPE, EVENTS_MEDIA_TYPE)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(resp) => {
                    let status = resp.status();
                    let code = format!(
                        "{} {}",
                        status.as_u16(),
                        status.canonical_reason().unwrap_or("")
                    );
                    self.metrics
                        .notify_status
                        .with_label_values(&[code.trim_end(), name])
                        .inc();
                    if status.is_success() || status.is_redirection() {
                        self.failures = 0;
                        self.metrics
                            .notify_events
                            .with_label_values(&[name, "Successes"])
                            .inc_by(n);
                        return true;
                    }
                    self.failures = self.failures.saturating_add(1);
                    self.metrics
                        .notify_events
                        .with_label_values(&[name, "Failures"])
                        .inc_by(n);
                    if self.failures == self.threshold {
                        tracing::warn!(endpoint = %name, status = %status, "notifications: endpoint refuses events; retrying every {:?}", self.backoff);
                    }
                }
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    self.metrics
                        .notify_events
                        .with_label_values(&[name, "Errors"])
                        .inc_by(n);
                    if self.failures == self.threshold {
                        tracing::warn!(endpoint = %name, error = %e, "notifications: endpoint unreachable; retrying every {:?}", self.backoff);
                    }
                }
            }
        }
    }
}
