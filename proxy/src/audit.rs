//! The audit log: one line per push, delete and refusal (user, client address, action, repository, tag or
//! digest, status), apart from the access log: target `berth_proxy::audit` on the log output, and JSON lines
//! appended to `audit_log` (`BERTH_AUDIT_LOG`) when set. Never a credential.

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
}

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
        Ok(AuditLog { file })
    }

    /// Records one event.
    pub fn record(&self, e: &AuditEvent<'_>) {
        tracing::info!(
            target: "berth_proxy::audit",
            user = e.user.unwrap_or("-"),
            client = %e.client,
            action = e.action,
            repository = e.repository.unwrap_or("-"),
            reference = e.reference.unwrap_or("-"),
            status = e.status,
            reason = e.reason.unwrap_or("-"),
            "audit"
        );
        if let Some(file) = &self.file {
            let mut line = serde_json::json!({
                "time": time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                "user": e.user,
                "client": e.client.to_string(),
                "action": e.action,
                "repository": e.repository,
                "reference": e.reference,
                "status": e.status,
            });
            if let Some(r) = e.reason {
                line["reason"] = r.into();
            }
            let mut text = line.to_string();
            text.push('\n');
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            // One write per line on a file opened for appending: lines never interleave.
            if let Err(err) = f.write_all(text.as_bytes()) {
                tracing::warn!("cannot write the audit log: {err}");
            }
        }
    }
}
