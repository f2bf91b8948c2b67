//! What a client may read of the server's failures: paths relative to the server's own
//! directories, and, for what went wrong inside the server, only an id that finds the details
//! in the log.

use std::path::Path;

/// Logs `details` under a fresh id; answers the text a client sees instead.
pub fn internal(details: &str) -> String {
    let id = format!("{:08x}", rand::random::<u32>());
    tracing::error!(error_id = %id, %details, "internal error");
    format!("internal error {id}: the server's log has the details")
}

/// `text` with each of `dirs` left out of the paths in it: `<dir>/runs/3` reads `runs/3`, and
/// `<dir>` alone reads `.`. Both a directory's canonical and its absolute spelling are removed.
pub fn redact(text: &str, dirs: &[&Path]) -> String {
    let mut roots: Vec<String> = dirs
        .iter()
        .flat_map(|dir| [dir.canonicalize().ok(), std::path::absolute(dir).ok()])
        .flatten()
        .map(|dir| dir.to_string_lossy().into_owned())
        .filter(|dir| dir.len() > 1)
        .collect();
    // The longest first, so a directory inside another is removed whole.
    roots.sort_by_key(|dir| std::cmp::Reverse(dir.len()));
    roots.dedup();
    let mut text = text.to_string();
    for root in &roots {
        text = text.replace(&format!("{root}/"), "").replace(root.as_str(), ".");
    }
    text
}

/// An I/O failure in words a user acts on, without the OS's text: it goes to the log.
pub fn io_problem(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::NotFound => "does not exist".to_string(),
        ErrorKind::PermissionDenied => "the server may not read or write it (permission denied)".to_string(),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => "the disk is full".to_string(),
        ErrorKind::ReadOnlyFilesystem => "is on a read-only file system".to_string(),
        ErrorKind::AlreadyExists => "already exists".to_string(),
        _ => format!("cannot be read or written ({})", internal(&error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_the_servers_directories_are_shown_relative_to_them() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().canonicalize().unwrap().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let text = format!("{}/runs/3/checkpoint-2: gone; {}", data.display(), data.display());
        assert_eq!(redact(&text, &[&data]), "runs/3/checkpoint-2: gone; .");
        assert_eq!(redact("/etc/passwd", &[&data]), "/etc/passwd", "what is not the server's stays");
    }

    #[test]
    fn io_failures_say_what_to_do_and_not_the_os_text() {
        let missing = std::io::Error::from_raw_os_error(2);
        assert_eq!(io_problem(&missing), "does not exist");
        let other = std::io::Error::other("EIO deep inside");
        let text = io_problem(&other);
        assert!(text.contains("internal error") && !text.contains("EIO"), "{text}");
    }
}
