//! Editing the htpasswd file for `berth-proxy user add/remove/list`: atomic rewrites (temporary file in the same
//! directory, fsync, rename) that keep every other line and comment as it was.

use std::io::Write;
use std::path::Path;

/// Why a user operation failed.
#[derive(Debug)]
pub enum UserError {
    /// The name cannot be stored in an htpasswd file.
    BadName(String),
    /// The user to remove does not exist.
    NoSuchUser(String),
    /// Reading or writing failed.
    Io(String),
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserError::BadName(m) | UserError::Io(m) => f.write_str(m),
            UserError::NoSuchUser(u) => write!(f, "no user {u:?}"),
        }
    }
}

impl std::error::Error for UserError {}

/// Check a user name: non-empty, no `:`, no whitespace or control characters.
pub fn check_name(name: &str) -> Result<(), UserError> {
    if name.is_empty()
        || name.len() > 255
        || name.contains(':')
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(UserError::BadName(format!(
            "{name:?} is not a valid user name (non-empty, at most 255 bytes, no ':' or spaces)"
        )));
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, UserError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(UserError::Io(format!("{}: {e}", path.display()))),
    }
}

fn line_user(line: &str) -> Option<&str> {
    if line.trim_start().starts_with('#') {
        return None;
    }
    line.split_once(':').map(|(u, _)| u)
}

/// An exclusive lock on `<file>.lock` next to the htpasswd file, held for a whole read-modify-write so two
/// concurrent `user add`/`remove` cannot lose each other's change. Released when dropped (or when the process
/// dies). The lock file stays; removing it would let two editors lock different files.
struct EditLock(#[allow(dead_code)] std::fs::File);

fn lock(path: &Path) -> Result<EditLock, UserError> {
    let io = |p: &Path, e: std::io::Error| UserError::Io(format!("{}: {e}", p.display()));
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let lock_path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io(&lock_path, e))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io(&lock_path, e.into()))?;
    Ok(EditLock(file))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<(), UserError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let io = |e: std::io::Error| UserError::Io(format!("{}: {e}", path.display()));
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).map_err(io)?;
    let original = std::fs::metadata(path).ok();
    let mode = original
        .as_ref()
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o640);
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    if let Some(m) = &original {
        // Keep the owner: root editing a file owned by the proxy's user must not leave it unreadable to it.
        std::os::unix::fs::fchown(tmp.as_file(), Some(m.uid()), Some(m.gid())).map_err(|e| {
            UserError::Io(format!(
                "{}: cannot keep its owner {}:{} ({e}); run as that user or root",
                path.display(),
                m.uid(),
                m.gid()
            ))
        })?;
    }
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    tmp.write_all(text.as_bytes()).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Add `user` with `hash`, or replace its hash if it exists. Returns whether it was new.
pub fn set_user(path: &Path, user: &str, hash: &str) -> Result<bool, UserError> {
    check_name(user)?;
    let _lock = lock(path)?;
    let text = read(path)?;
    let mut out = String::with_capacity(text.len() + 80);
    let mut replaced = false;
    for line in text.lines() {
        if line_user(line) == Some(user) {
            if !replaced {
                out.push_str(&format!("{user}:{hash}\n"));
                replaced = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !replaced {
        out.push_str(&format!("{user}:{hash}\n"));
    }
    write_atomic(path, &out)?;
    Ok(!replaced)
}

/// Remove `user` (every line for it).
pub fn remove_user(path: &Path, user: &str) -> Result<(), UserError> {
    let _lock = lock(path)?;
    let text = read(path)?;
    let mut found = false;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line_user(line) == Some(user) {
            found = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !found {
        return Err(UserError::NoSuchUser(user.to_string()));
    }
    write_atomic(path, &out)
}

/// The user names in the file, in file order.
pub fn list_users(path: &Path) -> Result<Vec<String>, UserError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UserError::Io(format!("{}: {e}", path.display())))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(line_user)
        .map(String::from)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_keeps_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sub/htpasswd");
        assert!(set_user(&f, "alice", "h1").unwrap());
        std::fs::write(&f, "# team\nalice:h1\nbob:h2\n").unwrap();
        assert!(!set_user(&f, "alice", "h3").unwrap());
        assert!(set_user(&f, "carol", "h4").unwrap());
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "# team\nalice:h3\nbob:h2\ncarol:h4\n"
        );
        remove_user(&f, "bob").unwrap();
        assert!(matches!(
            remove_user(&f, "bob"),
            Err(UserError::NoSuchUser(_))
        ));
        assert_eq!(list_users(&f).unwrap(), vec!["alice", "carol"]);
        assert!(set_user(&f, "a:b", "h").is_err());
        assert!(set_user(&f, "a b", "h").is_err());
    }

    #[test]
    fn concurrent_edits_are_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("htpasswd");
        std::fs::write(&f, "# team\n").unwrap();
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let f = f.clone();
                std::thread::spawn(move || {
                    for j in 0..5 {
                        set_user(&f, &format!("u{i}-{j}"), "h").unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let users = list_users(&f).unwrap();
        assert_eq!(users.len(), 80, "{users:?}");
        assert!(std::fs::read_to_string(&f).unwrap().starts_with("# team\n"));
    }

    #[test]
    fn the_owner_and_mode_are_kept() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("htpasswd");
        std::fs::write(&f, "alice:h1\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let me = std::fs::metadata(&f).unwrap();
        // As root, hand the file to another user first (as when the proxy runs as its own user).
        let (uid, gid) = if me.uid() == 0 {
            std::os::unix::fs::chown(&f, Some(4321), Some(4322)).unwrap();
            (4321, 4322)
        } else {
            (me.uid(), me.gid())
        };
        set_user(&f, "bob", "h2").unwrap();
        remove_user(&f, "alice").unwrap();
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, gid));
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
        assert_eq!(list_users(&f).unwrap(), vec!["bob"]);
    }
}
