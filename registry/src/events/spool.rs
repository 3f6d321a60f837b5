//! The event spool: batches of events in storage, each written atomically before the requests whose events
//! it holds are answered, and one position per endpoint (what it has been sent).
//!
//! Keys, under `_berth/events/<node>/`: `batches/<seq>` (a JSON array of events, `seq` zero-padded so that
//! listing order is delivery order) and `cursors/<hex of the endpoint name>` (`"<seq> <index>"`: the next
//! event the endpoint gets). A batch is removed once every endpoint is past it. Concurrent requests share one
//! write (group commit), so spooling costs one durable write per group, not per request.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use super::Event;
use crate::metrics::Metrics;
use crate::storage::{Storage, StorageError};

/// Largest batch object read back.
const BATCH_LIMIT: u64 = 256 * 1024 * 1024;
/// Most events group-committed in one batch.
const GROUP_MAX: usize = 1024;

/// A position in the spool: the next event an endpoint gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// The batch.
    pub seq: u64,
    /// The event within it.
    pub index: u32,
}

#[derive(Debug, Clone, Copy)]
struct Batch {
    seq: u64,
    count: u32,
}

impl Batch {
    /// Events of this batch at or after `pos`.
    fn after(&self, pos: Pos) -> u64 {
        match pos.seq.cmp(&self.seq) {
            std::cmp::Ordering::Less => u64::from(self.count),
            std::cmp::Ordering::Equal => u64::from(self.count.saturating_sub(pos.index)),
            std::cmp::Ordering::Greater => 0,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    batches: VecDeque<Batch>,
    total: u64,
    cursors: Vec<Pos>,
    next_seq: u64,
}

type Ack = oneshot::Sender<Result<(), String>>;

/// The spool of one registry node.
pub struct Spool {
    storage: Arc<dyn Storage>,
    dir: String,
    names: Vec<String>,
    max: u64,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<(Event, Ack)>,
    state: Mutex<State>,
    /// One more than the last batch written.
    committed: watch::Sender<u64>,
}

fn seq_name(seq: u64) -> String {
    format!("{seq:020}")
}

impl Spool {
    /// Opens the spool under `_berth/events/<node>/` for the named endpoints: finds the batches and the
    /// endpoints' positions left by an earlier run, and starts the writer.
    pub async fn open(
        storage: Arc<dyn Storage>,
        node: &str,
        names: &[String],
        max: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Spool>, StorageError> {
        let dir = format!("_berth/events/{node}");
        let mut state = State::default();
        for name in storage.list(&format!("{dir}/batches")).await? {
            let Ok(seq) = name.parse::<u64>() else {
                continue;
            };
            let key = format!("{dir}/batches/{name}");
            let bytes = match storage.read_small(&key, BATCH_LIMIT).await {
                Ok(b) => b,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            match serde_json::from_slice::<Vec<Event>>(&bytes) {
                Ok(events) => {
                    let count = u32::try_from(events.len()).unwrap_or(u32::MAX);
                    state.batches.push_back(Batch { seq, count });
                    state.total += u64::from(count);
                    state.next_seq = state.next_seq.max(seq + 1);
                }
                Err(e) => {
                    tracing::warn!(%key, error = %e, "notification spool: unreadable batch removed");
                    storage.delete(&key).await?;
                }
            }
        }
        let first = state
            .batches
            .front()
            .map(|b| b.seq)
            .unwrap_or(state.next_seq);
        for name in names {
            let key = format!("{dir}/cursors/{}", hex::encode(name));
            let pos = match storage.read_small(&key, 128).await {
                Ok(b) => parse_pos(&b).unwrap_or(Pos {
                    seq: first,
                    index: 0,
                }),
                Err(e) if e.is_not_found() => Pos {
                    seq: first,
                    index: 0,
                },
                Err(e) => return Err(e),
            };
            state.cursors.push(pos);
        }
        if state.total > 0 {
            tracing::info!(
                events = state.total,
                "notification spool: undelivered events from an earlier run"
            );
        }
        metrics
            .spool_capacity
            .set(i64::try_from(max).unwrap_or(i64::MAX));
        let (tx, rx) = mpsc::channel(GROUP_MAX * 4);
        let (committed, _) = watch::channel(state.next_seq);
        let spool = Arc::new(Spool {
            storage,
            dir,
            names: names.to_vec(),
            max,
            metrics,
            tx,
            state: Mutex::new(state),
            committed,
        });
        spool.refresh_metrics();
        tokio::spawn(Arc::clone(&spool).write_loop(rx));
        Ok(spool)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `event` durably (with whatever other events arrive meanwhile).
    pub async fn append(&self, event: Event) -> Result<(), String> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send((event, ack))
            .await
            .map_err(|_| "the spool writer stopped".to_string())?;
        done.await
            .map_err(|_| "the spool writer stopped".to_string())?
    }

    async fn write_loop(self: Arc<Self>, mut rx: mpsc::Receiver<(Event, Ack)>) {
        while let Some(first) = rx.recv().await {
            let mut group = vec![first];
            while group.len() < GROUP_MAX {
                match rx.try_recv() {
                    Ok(x) => group.push(x),
                    Err(_) => break,
                }
            }
            let (events, acks): (Vec<Event>, Vec<Ack>) = group.into_iter().unzip();
            let seq = {
                let mut s = self.lock();
                let seq = s.next_seq;
                s.next_seq += 1;
                seq
            };
            let result = match serde_json::to_vec(&events) {
                Ok(bytes) => self
                    .storage
                    .put(&self.batch_key(seq), Bytes::from(bytes))
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if result.is_ok() {
                let count = u32::try_from(events.len()).unwrap_or(u32::MAX);
                let doomed = {
                    let mut s = self.lock();
                    s.batches.push_back(Batch { seq, count });
                    s.total += u64::from(count);
                    self.make_room(&mut s)
                };
                self.remove(doomed).await;
                self.committed.send_replace(seq + 1);
            }
            for ack in acks {
                let _ = ack.send(result.clone());
            }
        }
    }

    /// Drops the oldest batches while the spool holds more than it may, moving endpoints that had not got
    /// them past them (and counting what each lost). Returns the batches to remove from storage.
    fn make_room(&self, s: &mut State) -> Vec<u64> {
        let mut doomed = Vec::new();
        while s.total > self.max && s.batches.len() > 1 {
            let Some(b) = s.batches.pop_front() else {
                break;
            };
            s.total -= u64::from(b.count);
            for (i, c) in s.cursors.iter_mut().enumerate() {
                let lost = b.after(*c);
                if lost > 0 {
                    self.metrics
                        .notify_dropped
                        .with_label_values(&[self.names[i].as_str()])
                        .inc_by(lost);
                    tracing::warn!(
                        endpoint = %self.names[i],
                        events = lost,
                        "notification spool full: undelivered events dropped"
                    );
                }
                if *c
                    < (Pos {
                        seq: b.seq + 1,
                        index: 0,
                    })
                {
                    *c = Pos {
                        seq: b.seq + 1,
                        index: 0,
                    };
                }
            }
            doomed.push(b.seq);
        }
        doomed
    }

    async fn remove(&self, seqs: Vec<u64>) {
        if seqs.is_empty() {
            return;
        }
        let keys: Vec<String> = seqs.iter().map(|s| self.batch_key(*s)).collect();
        if let Err(e) = self.storage.delete_batch(&keys, false).await {
            tracing::warn!(error = %e, "notification spool: cannot remove delivered batches");
        }
    }

    fn batch_key(&self, seq: u64) -> String {
        format!("{}/batches/{}", self.dir, seq_name(seq))
    }

    /// Endpoint `i`'s position.
    pub fn cursor(&self, i: usize) -> Pos {
        self.lock().cursors[i]
    }

    /// The first batch endpoint `i` has not had in full, if any.
    pub fn next_batch(&self, i: usize) -> Option<(u64, u32)> {
        let s = self.lock();
        let c = s.cursors[i];
        s.batches
            .iter()
            .find(|b| b.after(c) > 0)
            .map(|b| (b.seq, if c.seq == b.seq { c.index } else { 0 }))
    }

    /// A batch's events.
    pub async fn read_batch(&self, seq: u64) -> Result<Vec<Event>, StorageError> {
        let key = self.batch_key(seq);
        let bytes = self.storage.read_small(&key, BATCH_LIMIT).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StorageError::Io(key, std::io::Error::other(e.to_string())))
    }

    /// Waits until batch `seq` (or a later one) has been written.
    pub async fn wait_past(&self, seq: u64) {
        let mut rx = self.committed.subscribe();
        let _ = rx.wait_for(|written| *written > seq).await;
    }

    /// Endpoint `i` has had everything before `pos`: remembers it (in storage too) and removes the batches
    /// every endpoint is past.
    pub async fn advance(&self, i: usize, pos: Pos) {
        let (doomed, pos) = {
            let mut s = self.lock();
            let c = &mut s.cursors[i];
            if pos <= *c {
                return;
            }
            *c = pos;
            let min = s.cursors.iter().copied().min().unwrap_or(pos);
            let mut doomed = Vec::new();
            while let Some(b) = s.batches.front().copied() {
                if b.after(min) > 0 {
                    break;
                }
                s.batches.pop_front();
                s.total -= u64::from(b.count);
                doomed.push(b.seq);
            }
            (doomed, pos)
        };
        let key = format!("{}/cursors/{}", self.dir, hex::encode(&self.names[i]));
        let text = format!("{} {}", pos.seq, pos.index);
        if let Err(e) = self.storage.put(&key, Bytes::from(text)).await {
            tracing::warn!(error = %e, "notification spool: cannot save an endpoint's position");
        }
        self.remove(doomed).await;
    }

    /// Sets the spool gauges.
    pub fn refresh_metrics(&self) {
        let s = self.lock();
        self.metrics
            .spool_events
            .set(i64::try_from(s.total).unwrap_or(i64::MAX));
        for (i, c) in s.cursors.iter().enumerate() {
            let pending: u64 = s.batches.iter().map(|b| b.after(*c)).sum();
            self.metrics
                .notify_pending
                .with_label_values(&[self.names[i].as_str()])
                .set(i64::try_from(pending).unwrap_or(i64::MAX));
        }
    }

    /// Whether the spool holds as many events as it may.
    pub fn is_full(&self) -> bool {
        self.lock().total >= self.max
    }
}

fn parse_pos(b: &[u8]) -> Option<Pos> {
    let text = std::str::from_utf8(b).ok()?;
    let (seq, index) = text.trim().split_once(' ')?;
    Some(Pos {
        seq: seq.parse().ok()?,
        index: index.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_what_is_left() {
        let b = Batch { seq: 5, count: 10 };
        assert_eq!(b.after(Pos { seq: 4, index: 7 }), 10);
        assert_eq!(b.after(Pos { seq: 5, index: 3 }), 7);
        assert_eq!(b.after(Pos { seq: 5, index: 10 }), 0);
        assert_eq!(b.after(Pos { seq: 6, index: 0 }), 0);
        assert_eq!(parse_pos(b"12 3\n"), Some(Pos { seq: 12, index: 3 }));
        assert_eq!(parse_pos(b"x"), None);
    }
}
