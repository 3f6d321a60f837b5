//! Watching the files the proxy re-reads on change (the htpasswd file, the access rules): a stamp of what is
//! on disk, and a poller that calls a reload on a blocking thread.

use std::path::Path;
use std::time::Duration;

/// Identity of a file on disk (mtime, size, inode), to notice changes, including a replacement by rename.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

/// The stamp of `path`, or `None` when it cannot be read.
pub fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// Calls `reload` on a blocking thread every `interval` until the returned task is dropped or aborted.
pub fn spawn_poller(
    interval: Duration,
    reload: impl Fn() + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    let reload = std::sync::Arc::new(reload);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let r = std::sync::Arc::clone(&reload);
            let _ = tokio::task::spawn_blocking(move || r()).await;
        }
    })
}
