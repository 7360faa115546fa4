//! `files.put` / `files.get` / `files.list`, confined to the workspace.
//!
//! Paths are relative, without `..`; they are walked one component at a time with
//! `openat(O_NOFOLLOW)` from a descriptor of the workspace, so a symlink that user code planted
//! anywhere on the path is refused rather than followed, and no check can be raced by renaming
//! things between a check and a use. Only regular files are read or written, with size caps.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::protocol::Base64;
use crate::protocol::{
    DirEntry, ErrorInfo, ErrorKind, FilesGetReply, FilesListReply, FilesPutReply,
};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("path `{path}` refused: {reason}")]
    Refused { path: String, reason: String },
    #[error("`{path}` is {size} bytes, over the limit of {max} bytes")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("`{path}` does not exist")]
    NotFound { path: String },
    #[error("`{path}`: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl From<FileError> for ErrorInfo {
    fn from(e: FileError) -> Self {
        let kind = match &e {
            FileError::Refused { .. } => ErrorKind::PathRefused,
            FileError::TooLarge { .. } => ErrorKind::FileTooLarge,
            FileError::NotFound { .. } => ErrorKind::NotFound,
            FileError::Io { .. } => ErrorKind::FileError,
        };
        let mut info = ErrorInfo::new(kind, e.to_string());
        if let FileError::TooLarge { max, .. } = e {
            info.limit = Some(max);
        }
        info
    }
}

fn refused(path: &str, reason: &str) -> FileError {
    FileError::Refused {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Splits a workspace path into plain components; `.` and empty components are dropped.
fn components(path: &str) -> Result<Vec<CString>, FileError> {
    if path.starts_with('/') {
        return Err(refused(path, "absolute paths are not allowed"));
    }
    if path.contains('\0') {
        return Err(refused(path, "contains a NUL byte"));
    }
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(refused(path, "`..` is not allowed")),
            c => out.push(CString::new(c).map_err(|_| refused(path, "contains a NUL byte"))?),
        }
    }
    Ok(out)
}

fn open_root(root: &Path) -> Result<OwnedFd, FileError> {
    let f = File::open(root).map_err(|source| FileError::Io {
        path: root.display().to_string(),
        source,
    })?;
    Ok(f.into())
}

fn openat(
    dir: &OwnedFd,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::c_uint,
) -> std::io::Result<OwnedFd> {
    // SAFETY: valid dirfd and NUL-terminated name; the returned fd is owned by nobody else.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn lstat_at(dir: &OwnedFd, name: &CStr) -> Option<libc::stat> {
    // SAFETY: stat is plain data; fstatat fills it on success.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    (rc == 0).then_some(st)
}

fn fstat(fd: &OwnedFd) -> std::io::Result<libc::stat> {
    // SAFETY: as above.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

fn kind_of(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        _ => "other",
    }
}

/// Explains why opening `name` in `dir` failed, distinguishing planted symlinks.
fn open_error(path: &str, dir: &OwnedFd, name: &CStr, e: std::io::Error, want: &str) -> FileError {
    match lstat_at(dir, name) {
        None => FileError::NotFound {
            path: path.to_owned(),
        },
        Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
            refused(path, "a symlink is on the path")
        }
        Some(st) if kind_of(st.st_mode) != want => refused(
            path,
            &format!(
                "not a {want}",
                want = if want == "dir" {
                    "directory"
                } else {
                    "regular file"
                }
            ),
        ),
        Some(_) => FileError::Io {
            path: path.to_owned(),
            source: e,
        },
    }
}

/// Opens the directories of `parts`, creating missing ones when `create` is set.
fn walk(root: &Path, path: &str, parts: &[CString], create: bool) -> Result<OwnedFd, FileError> {
    let mut dir = open_root(root)?;
    for part in parts {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let next = match openat(&dir, part, flags, 0) {
            Ok(fd) => fd,
            Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {
                // SAFETY: valid dirfd and name.
                let rc = unsafe { libc::mkdirat(dir.as_raw_fd(), part.as_ptr(), 0o755) };
                if rc != 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(FileError::Io {
                            path: path.to_owned(),
                            source: e,
                        });
                    }
                }
                openat(&dir, part, flags, 0).map_err(|e| open_error(path, &dir, part, e, "dir"))?
            }
            Err(e) => return Err(open_error(path, &dir, part, e, "dir")),
        };
        dir = next;
    }
    Ok(dir)
}

pub fn put(root: &Path, path: &str, data: &[u8], max: u64) -> Result<FilesPutReply, FileError> {
    if data.len() as u64 > max {
        return Err(FileError::TooLarge {
            path: path.to_owned(),
            size: data.len() as u64,
            max,
        });
    }
    let parts = components(path)?;
    let Some((name, dirs)) = parts.split_last() else {
        return Err(refused(path, "names no file"));
    };
    let dir = walk(root, path, dirs, true)?;
    // O_NONBLOCK: opening a FIFO planted by user code must fail, not hang.
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let fd =
        openat(&dir, name, flags, 0o644).map_err(|e| open_error(path, &dir, name, e, "file"))?;
    let st = fstat(&fd).map_err(|source| FileError::Io {
        path: path.to_owned(),
        source,
    })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(refused(path, "not a regular file"));
    }
    let mut f = File::from(fd);
    f.set_len(0)
        .and_then(|_| f.write_all(data))
        .map_err(|source| FileError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(FilesPutReply {
        path: path.to_owned(),
        size: data.len() as u64,
    })
}

pub fn get(root: &Path, path: &str, max: u64) -> Result<FilesGetReply, FileError> {
    let parts = components(path)?;
    let Some((name, dirs)) = parts.split_last() else {
        return Err(refused(path, "names no file"));
    };
    let dir = walk(root, path, dirs, false)?;
    let fd = openat(
        &dir,
        name,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        0,
    )
    .map_err(|e| open_error(path, &dir, name, e, "file"))?;
    let st = fstat(&fd).map_err(|source| FileError::Io {
        path: path.to_owned(),
        source,
    })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(refused(path, "not a regular file"));
    }
    if st.st_size as u64 > max {
        return Err(FileError::TooLarge {
            path: path.to_owned(),
            size: st.st_size as u64,
            max,
        });
    }
    let mut data = Vec::with_capacity(st.st_size as usize);
    // The file may grow while it is read; never read past the cap.
    File::from(fd)
        .take(max + 1)
        .read_to_end(&mut data)
        .map_err(|source| FileError::Io {
            path: path.to_owned(),
            source,
        })?;
    if data.len() as u64 > max {
        return Err(FileError::TooLarge {
            path: path.to_owned(),
            size: data.len() as u64,
            max,
        });
    }
    Ok(FilesGetReply {
        path: path.to_owned(),
        size: data.len() as u64,
        data: Base64(data),
    })
}

pub fn list(root: &Path, path: &str) -> Result<FilesListReply, FileError> {
    let parts = components(path)?;
    let dir = walk(root, path, &parts, false)?;
    // SAFETY: fdopendir takes ownership of a duplicate; closedir releases it.
    let dup = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(FileError::Io {
            path: path.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    let stream = unsafe { libc::fdopendir(dup) };
    if stream.is_null() {
        let e = std::io::Error::last_os_error();
        unsafe { libc::close(dup) };
        return Err(FileError::Io {
            path: path.to_owned(),
            source: e,
        });
    }
    let mut entries = Vec::new();
    loop {
        // SAFETY: stream is a valid DIR*; the entry is valid until the next readdir.
        let ent = unsafe { libc::readdir(stream) };
        if ent.is_null() {
            break;
        }
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let (kind, size) = match lstat_at(&dir, name) {
            Some(st) => {
                let kind = kind_of(st.st_mode);
                // Only a regular file's size means anything to a user.
                (kind, if kind == "file" { st.st_size as u64 } else { 0 })
            }
            None => ("other", 0),
        };
        entries.push(DirEntry {
            name: String::from_utf8_lossy(bytes).into_owned(),
            kind: kind.to_owned(),
            size,
        });
    }
    // SAFETY: stream came from fdopendir and is closed once.
    unsafe { libc::closedir(stream) };
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(FilesListReply {
        path: path.to_owned(),
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_round_trip() {
        let ws = tempfile::tempdir().unwrap();
        put(ws.path(), "a/b/c.bin", &[0, 1, 255], 100).unwrap();
        assert_eq!(
            get(ws.path(), "a/b/c.bin", 100).unwrap().data.0,
            vec![0, 1, 255]
        );
        let l = list(ws.path(), "a/./b").unwrap();
        assert_eq!(
            l.entries,
            vec![DirEntry {
                name: "c.bin".into(),
                kind: "file".into(),
                size: 3
            }]
        );
        assert_eq!(list(ws.path(), ".").unwrap().entries[0].kind, "dir");
    }

    #[test]
    fn refuses_escapes_and_symlinks() {
        let ws = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), ws.path().join("f")).unwrap();
        for (p, want) in [
            ("../x", "`..` is not allowed"),
            ("/etc/passwd", "absolute paths are not allowed"),
            ("link/secret", "a symlink is on the path"),
            ("f", "a symlink is on the path"),
        ] {
            let e = get(ws.path(), p, 100).unwrap_err();
            assert!(e.to_string().contains(want), "{p}: {e}");
        }
        assert!(matches!(
            put(ws.path(), "f", b"x", 100),
            Err(FileError::Refused { .. })
        ));
        assert!(matches!(
            put(ws.path(), "link/new", b"x", 100),
            Err(FileError::Refused { .. })
        ));
        assert!(!outside.path().join("new").exists());
        assert_eq!(std::fs::read(outside.path().join("secret")).unwrap(), b"s");
        assert!(matches!(
            list(ws.path(), "link"),
            Err(FileError::Refused { .. })
        ));
    }

    #[test]
    fn caps_sizes_and_reports_missing_files() {
        let ws = tempfile::tempdir().unwrap();
        assert!(matches!(
            put(ws.path(), "big", &[0; 11], 10),
            Err(FileError::TooLarge { .. })
        ));
        std::fs::write(ws.path().join("big"), [0; 11]).unwrap();
        assert!(matches!(
            get(ws.path(), "big", 10),
            Err(FileError::TooLarge { size: 11, .. })
        ));
        assert!(matches!(
            get(ws.path(), "nope", 10),
            Err(FileError::NotFound { .. })
        ));
        assert!(matches!(
            get(ws.path(), ".", 10),
            Err(FileError::Refused { .. })
        ));
    }
}
