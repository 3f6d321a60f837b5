//! The event spool: batches of events in storage, each written atomically before the requests whose events
//! it holds are answered, and one position per endpoint (what it has been sent).
//!
//! Keys, under `_berth/events/<node>/`: `batches/<seq>-<count>` (a JSON array of `count` events, `seq`
//! zero-padded so that listing order is delivery order, the count in the name so that opening the spool is one
//! listing) and `cursors/<hex of the endpoint name>` (`"<seq> <index>"`: the next event the endpoint gets). A
//! batch is removed once every endpoint is past it. Concurrent requests share one write (group commit), so
//! spooling costs one durable write per group, not per request.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use super::Event;
use crate::metrics::Metrics;
use crate::storage::{Storage, StorageError};

/// Largest batch object read back.
const BATCH_LIMIT: u64 = 256 * 1024 * 1024;

/// Why a batch could not be read.
#[derive(Debug)]
pub enum BatchError {
    /// The batch is gone or unreadable for good (removed by hand, corrupt): its events are lost.
    Lost(String),
    /// A storage failure that may pass.
    Storage(StorageError),
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Lost(m) => write!(f, "{m}"),
            BatchError::Storage(e) => write!(f, "{e}"),
        }
    }
}
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
    /// How many batches this process has written.
    committed: watch::Sender<u64>,
}

fn batch_name(b: Batch) -> String {
    format!("{:020}-{}", b.seq, b.count)
}

fn parse_batch_name(name: &str) -> Option<Batch> {
    let (seq, count) = name.split_once('-')?;
    Some(Batch {
        seq: seq.parse().ok()?,
        count: count.parse().ok()?,
    })
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
            let Some(b) = parse_batch_name(&name) else {
                continue;
            };
            state.batches.push_back(b);
            state.total += u64::from(b.count);
            state.next_seq = state.next_seq.max(b.seq.saturating_add(1));
        }
        let first = state
            .batches
            .front()
            .map(|b| b.seq)
            .unwrap_or(state.next_seq);
        for name in names {
            let key = format!("{dir}/cursors/{}", hex::encode(name));
            let saved = match storage.read_small(&key, 128).await {
                Ok(b) => parse_pos(&b),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e),
            };
            let mut pos = saved.unwrap_or(Pos {
                seq: first,
                index: 0,
            });
            // A position at the end of a batch is the start of the next one.
            if let Some(b) = state.batches.iter().find(|b| b.seq == pos.seq) {
                if pos.index >= b.count {
                    pos = Pos {
                        seq: b.seq.saturating_add(1),
                        index: 0,
                    };
                }
            }
            // Batches already delivered are removed, and with them the record of their numbers: the next
            // batch is numbered after every position, or it would sort before the endpoints and never be sent.
            let past = if pos.index > 0 {
                pos.seq.saturating_add(1)
            } else {
                pos.seq
            };
            state.next_seq = state.next_seq.max(past);
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
        let (committed, _) = watch::channel(0);
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
            let batch = {
                let mut s = self.lock();
                let seq = s.next_seq;
                s.next_seq += 1;
                Batch {
                    seq,
                    count: u32::try_from(events.len()).unwrap_or(u32::MAX),
                }
            };
            let result = match serde_json::to_vec(&events) {
                Ok(bytes) => self
                    .storage
                    .put(&self.batch_key(batch), Bytes::from(bytes))
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if result.is_ok() {
                let doomed = {
                    let mut s = self.lock();
                    s.batches.push_back(batch);
                    s.total += u64::from(batch.count);
                    self.make_room(&mut s)
                };
                self.remove(doomed).await;
                self.committed.send_modify(|n| *n += 1);
            }
            for ack in acks {
                let _ = ack.send(result.clone());
            }
        }
    }

    /// Drops the oldest batches while the spool holds more than it may, moving endpoints that had not got
    /// them past them (and counting what each lost). Returns the batches to remove from storage.
    fn make_room(&self, s: &mut State) -> Vec<Batch> {
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
            doomed.push(b);
        }
        doomed
    }

    async fn remove(&self, batches: Vec<Batch>) {
        if batches.is_empty() {
            return;
        }
        let keys: Vec<String> = batches.iter().map(|b| self.batch_key(*b)).collect();
        if let Err(e) = self.storage.delete_batch(&keys, false).await {
            tracing::warn!(error = %e, "notification spool: cannot remove delivered batches");
        }
    }

    fn batch_key(&self, b: Batch) -> String {
        format!("{}/batches/{}", self.dir, batch_name(b))
    }

    /// Endpoint `i`'s position.
    pub fn cursor(&self, i: usize) -> Pos {
        self.lock().cursors[i]
    }

    /// The first batch endpoint `i` has not had in full, with where in it to start; or, when it has had
    /// everything, how many batches had been written then (for [`Spool::wait_past`]).
    pub fn next_batch(&self, i: usize) -> Result<(u64, u32, u32), u64> {
        let s = self.lock();
        let c = s.cursors[i];
        // Batches are in order of their numbers: the first not wholly before the position.
        let from = s
            .batches
            .partition_point(|b| b.after(c) == 0 && b.seq <= c.seq);
        match s.batches.range(from..).find(|b| b.after(c) > 0) {
            Some(b) => Ok((b.seq, b.count, if c.seq == b.seq { c.index } else { 0 })),
            None => Err(*self.committed.borrow()),
        }
    }

    /// A batch's events.
    pub async fn read_batch(&self, seq: u64, count: u32) -> Result<Vec<Event>, BatchError> {
        let key = self.batch_key(Batch { seq, count });
        let bytes = match self.storage.read_small(&key, BATCH_LIMIT).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Err(BatchError::Lost(format!("{key} is gone"))),
            Err(e) => return Err(BatchError::Storage(e)),
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| BatchError::Lost(format!("{key} is not a batch of events: {e}")))
    }

    /// Waits until more batches than `written` have been written.
    pub async fn wait_past(&self, written: u64) {
        let mut rx = self.committed.subscribe();
        let _ = rx.wait_for(|n| *n > written).await;
    }

    /// Endpoint `i` cannot have batch `seq` (lost): it moves past it, and what it had not had is counted as
    /// dropped.
    pub async fn skip_lost(&self, i: usize, seq: u64, count: u32) {
        let lost = Batch { seq, count }.after(self.cursor(i));
        if lost > 0 {
            self.metrics
                .notify_dropped
                .with_label_values(&[self.names[i].as_str()])
                .inc_by(lost);
        }
        self.advance(
            i,
            Pos {
                seq: seq.saturating_add(1),
                index: 0,
            },
        )
        .await;
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
                doomed.push(b);
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
        let b = Batch { seq: 7, count: 3 };
        assert_eq!(
            parse_batch_name(&batch_name(b)).map(|x| (x.seq, x.count)),
            Some((7, 3))
        );
        assert!(batch_name(b).starts_with("00000000000000000007-"));
        assert!(parse_batch_name("7").is_none());
        assert_eq!(parse_pos(b"x"), None);
    }
}
