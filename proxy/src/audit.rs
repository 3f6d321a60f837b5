//! The audit log: one line per push, delete and refusal (user, client address, action, repository, tag or
//! digest, status), apart from the access log: target `berth_proxy::audit` on the log output, and JSON lines
//! appended to `audit_log` (`BERTH_AUDIT_LOG`) when set. Never a credential. Refusals are bounded per second
//! (the next one written counts those left out), and user names cut at 256 bytes.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

/// One audited event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent<'a> {
    /// The authenticated user, if any.
    pub user: Option<&'a str>,
    /// The client's address.
    pub client: IpAddr,
    /// `pull`, `push`, `delete`, or `login` for refused credentials.
    pub action: &'a str,
    /// The repository, when the request names one.
    pub repository: Option<&'a str>,
    /// The tag or digest, when the request names one.
    pub reference: Option<&'a str>,
    /// The status answered.
    pub status: u16,
    /// Why it was refused, for refusals.
    pub reason: Option<&'a str>,
}

/// Where audit lines go.
#[derive(Debug, Default)]
pub struct AuditLog {
    file: Option<Mutex<std::fs::File>>,
    /// Refusals written in the current second, and those left out since the last one written.
    refusals: Mutex<(u64, u32, u64)>,
}

/// Most refusals of credentials (401, 429) written per second: anyone can cause them as fast as they can send
/// (a throttled login costs nothing), and the log must not fill the disk for it. The next one written says how
/// many were left out. Refusals of authenticated users (403) are all written: they have a name to answer for.
pub const REFUSALS_PER_SECOND: u32 = 50;

/// Longest user name written (a name is what the client claims, whatever its length).
const USER_MAX: usize = 256;

impl AuditLog {
    /// Audit lines on the log output, and appended to `path` when given (made 0640 when missing).
    pub fn open(path: Option<&Path>) -> std::io::Result<AuditLog> {
        let file = match path {
            None => None,
            Some(p) => {
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .open(p)?;
                Some(Mutex::new(f))
            }
        };
        Ok(AuditLog {
            file,
            refusals: Mutex::new((0, 0, 0)),
        })
    }

    /// Records one event (refusals: at most [`REFUSALS_PER_SECOND`]).
    pub fn record(&self, e: &AuditEvent<'_>) {
        let mut suppressed = None;
        if e.reason.is_some() && matches!(e.status, 401 | 429) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            if r.0 != now {
                *r = (now, 0, r.2);
            }
            if r.1 >= REFUSALS_PER_SECOND {
                r.2 += 1;
                return;
            }
            r.1 += 1;
            suppressed = Some(std::mem::take(&mut r.2)).filter(|&n| n > 0);
        }
        let user = e.user.map(|u| crate::authn::cut_name(u, USER_MAX));
        tracing::info!(
            target: "berth_proxy::audit",
            user = user.unwrap_or("-"),
            client = %e.client,
            action = e.action,
            repository = e.repository.unwrap_or("-"),
            reference = e.reference.unwrap_or("-"),
            status = e.status,
            reason = e.reason.unwrap_or("-"),
            suppressed = suppressed.unwrap_or(0),
            "audit"
        );
        if let Some(file) = &self.file {
            #[derive(serde::Serialize)]
            struct Line<'a> {
                time: String,
                user: Option<&'a str>,
                client: String,
                action: &'a str,
                repository: Option<&'a str>,
                reference: Option<&'a str>,
                status: u16,
                #[serde(skip_serializing_if = "Option::is_none")]
                reason: Option<&'a str>,
                /// Refusals left out before this one (over the per-second bound).
                #[serde(skip_serializing_if = "Option::is_none")]
                suppressed: Option<u64>,
            }
            let line = Line {
                time: time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                user,
                client: e.client.to_string(),
                action: e.action,
                repository: e.repository,
                reference: e.reference,
                status: e.status,
                reason: e.reason,
                suppressed,
            };
            let mut text = serde_json::to_string(&line).unwrap_or_default();
            text.push('\n');
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            // One write per line on a file opened for appending: lines never interleave.
            if let Err(err) = f.write_all(text.as_bytes()) {
                tracing::warn!("cannot write the audit log: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_bounded_and_counted_and_names_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(Some(&path)).unwrap();
        let long = "x".repeat(5000);
        let refusal = AuditEvent {
            user: Some(&long),
            client: "127.0.0.1".parse().unwrap(),
            action: "login",
            repository: None,
            reference: None,
            status: 429,
            reason: Some("authentication throttled"),
        };
        // Within one second (retried if the second turns meanwhile).
        loop {
            std::fs::write(&path, "").unwrap();
            *log.refusals.lock().unwrap() = (0, 0, 0);
            let start = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            for _ in 0..1000 {
                log.record(&refusal);
            }
            let end = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            if start == end {
                break;
            }
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), REFUSALS_PER_SECOND as usize);
        assert!(text.lines().all(|l| l.len() < 700), "names are cut");
        assert_eq!(
            log.refusals.lock().unwrap().2,
            1000 - u64::from(REFUSALS_PER_SECOND)
        );
        // Pushes are never dropped.
        let push = AuditEvent {
            reason: None,
            status: 201,
            action: "push",
            ..refusal
        };
        for _ in 0..100 {
            log.record(&push);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), REFUSALS_PER_SECOND as usize + 100);
    }
}
