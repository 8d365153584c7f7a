//! File helpers shared by every module that writes results to disk.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `bytes` to a temporary file beside `path`, syncs it, renames it over `path` and syncs
/// the folder, so that a reader — or a restart after a power cut — sees either the old file or
/// the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // A unique temporary name: two writers of one folder never rename each other's half file.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| readable_by_all(tmp.as_file()))
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot move the new file to {}", path.display()))?;
    sync_parent(path)
}

/// Mode 0644, as a file created under the usual umask gets: a temporary file is created 0600,
/// which would hide results from other users — a web server serving a published folder, say.
/// (Secret keys are written apart, owner-only.)
fn readable_by_all(file: &File) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// A regular file's bytes, at most `max_bytes` of them: a FIFO, a device (`/dev/zero`) or a
/// folder named where a file is expected is an error, not a hang or unbounded memory.
pub(crate) fn read_regular(path: &Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() || meta.len() > max_bytes {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("not a regular file of at most {max_bytes} bytes"),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    File::open(path)?.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("grew past {max_bytes} bytes"),
        ));
    }
    Ok(bytes)
}

/// A regular file of at most `max_bytes` as UTF-8 text (see [`read_regular`]).
pub(crate) fn read_text(path: &Path, max_bytes: u64) -> Result<String> {
    let bytes = read_regular(path, max_bytes)?;
    String::from_utf8(bytes).context("not UTF-8 text")
}

/// Makes renames and links in `path`'s folder durable.
pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync the folder {}", dir.display()))
}

/// Hex sha256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Whether two paths name one existing file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}
