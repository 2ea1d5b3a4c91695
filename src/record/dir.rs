//! The recording directory, checked before anything is served: a directory
//! that cannot take recordings, or that others could tamper with, is refused
//! at start with its path and the reason, not discovered one session at a time.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a recording directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// It does not exist and could not be created.
    #[error("record_dir {}: cannot create it: {source}", path.display())]
    Create {
        /// The directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A directory above it is a file, so it cannot be created.
    #[error("record_dir {} cannot be created: {} is a file", path.display(), file.display())]
    UnderAFile {
        /// The directory.
        path: PathBuf,
        /// The file in its way.
        file: PathBuf,
    },
    /// Its metadata could not be read.
    #[error("record_dir {}: cannot inspect it: {source}", path.display())]
    Inspect {
        /// The directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// It names a file (or something else that is not a directory).
    #[error("record_dir {} is not a directory (it names a file)", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// A probe file could not be created, written or removed in it.
    #[error("record_dir {} is not writable: {source}", path.display())]
    NotWritable {
        /// The directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// Others may write to it (sticky: a shared directory such as /tmp).
    #[error("record_dir {} is a shared directory (mode {mode:o}): name a directory of baton's own, e.g. a subdirectory of it", path.display())]
    Shared {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Others may write to it and it belongs to another user, so it cannot be made private.
    #[error("record_dir {} is writable by group or others (mode {mode:o}) and belongs to another user: make it private (chmod 700) or name another", path.display())]
    OpenToOthers {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Making it private failed.
    #[error("record_dir {} is writable by group or others (mode {mode:o}) and could not be made private: {source}", path.display())]
    Tighten {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// What the system said.
        source: std::io::Error,
    },
}

/// Makes `dir` ready for recordings: creates it (mode 0700) if missing, checks
/// it is a writable directory, and makes an existing one baton owns private.
pub fn prepare(dir: &Path) -> Result<(), DirError> {
    let path = || dir.to_path_buf();
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            if let Some(file) = dir.ancestors().skip(1).find(|a| a.is_file()) {
                return Err(DirError::UnderAFile {
                    path: path(),
                    file: file.to_path_buf(),
                });
            }
            create(dir).map_err(|source| DirError::Create { path: path(), source })?;
            std::fs::metadata(dir).map_err(|source| DirError::Inspect { path: path(), source })?
        }
        Err(source) => return Err(DirError::Inspect { path: path(), source }),
    };
    if !meta.is_dir() {
        return Err(DirError::NotADirectory { path: path() });
    }
    let owner = probe(dir).map_err(|source| DirError::NotWritable { path: path(), source })?;
    private(dir, &meta, owner)
}

fn create(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Creates, writes and removes a file in `dir`; the user id files get there
/// (baton's own, as the file system sees it).
fn probe(dir: &Path) -> std::io::Result<Option<u32>> {
    let file = dir.join(format!(".baton-probe-{}", uuid::Uuid::new_v4().simple()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file)
        .and_then(|mut f| {
            f.write_all(b"\n")?;
            f.sync_all()?;
            f.metadata()
        });
    let removed = std::fs::remove_file(&file);
    let meta = written?;
    removed?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok(Some(meta.uid()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        Ok(None)
    }
}

#[cfg(unix)]
fn private(dir: &Path, meta: &std::fs::Metadata, owner: Option<u32>) -> Result<(), DirError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 == 0 {
        return Ok(());
    }
    let path = dir.to_path_buf();
    // Sticky and open to all: a shared directory like /tmp, never ours to lock.
    if mode & 0o1000 != 0 {
        return Err(DirError::Shared { path, mode });
    }
    if owner != Some(meta.uid()) {
        return Err(DirError::OpenToOthers { path, mode });
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| DirError::Tighten {
        path,
        mode,
        source,
    })?;
    tracing::warn!(
        "record_dir {} was writable by group or others (mode {mode:o}); made it private (700)",
        dir.display()
    );
    Ok(())
}

#[cfg(not(unix))]
fn private(_dir: &Path, _meta: &std::fs::Metadata, _owner: Option<u32>) -> Result<(), DirError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("baton-dir-{tag}-{}", uuid::Uuid::new_v4().simple()))
    }

    #[test]
    fn a_missing_directory_is_created_private_and_a_file_is_refused_by_name() {
        let dir = temp("new").join("nested");
        prepare(&dir).expect("created");
        assert!(dir.is_dir());
        assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0, "the probe is gone");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dir).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        let file = dir.join("a-file");
        std::fs::write(&file, "x").expect("file");
        let error = prepare(&file).expect_err("a file");
        assert!(matches!(error, DirError::NotADirectory { .. }), "{error:?}");
        let text = error.to_string();
        assert!(
            text.contains(&file.display().to_string()) && text.contains("not a directory"),
            "{text}"
        );
        let under = prepare(&file.join("sub")).expect_err("under a file");
        assert!(matches!(under, DirError::UnderAFile { .. }), "{under:?}");
        assert!(under.to_string().ends_with("a-file is a file"), "{under}");
        let _ = std::fs::remove_dir_all(dir.parent().expect("parent"));
    }

    #[cfg(unix)]
    #[test]
    fn an_open_directory_is_made_private_and_a_shared_one_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp("open");
        std::fs::create_dir(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        prepare(&dir).expect("tightened");
        let mode = std::fs::metadata(&dir).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let error = prepare(&dir).expect_err("sticky");
        assert!(matches!(error, DirError::Shared { mode: 0o1777, .. }), "{error:?}");
        let mode = std::fs::metadata(&dir).expect("meta").permissions().mode();
        assert_eq!(mode & 0o7777, 0o1777, "a shared directory is left as it is");
        // Another user's open directory is not ours to change (only root can set one up here).
        let theirs = dir.join("theirs");
        std::fs::create_dir(&theirs).expect("dir");
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        if std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).is_ok() {
            let error = prepare(&theirs).expect_err("another user's");
            assert!(matches!(error, DirError::OpenToOthers { .. }), "{error:?}");
            let mode = std::fs::metadata(&theirs).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o777);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
