//! Finding PostgreSQL binaries and the OS user to run them as.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::LocalPgError;

/// The bin dir to use, in the documented discovery order.
pub fn find_bin_dir() -> Result<PathBuf, LocalPgError> {
    if let Some(dir) = std::env::var_os("PGTENANT_PG_BIN").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_server(&dir) {
            Ok(dir)
        } else {
            Err(LocalPgError::BadBinDir(dir))
        };
    }
    if let Some(dir) = pg_config_bindir().filter(|d| has_server(d)) {
        return Ok(dir);
    }
    if let Some(dir) = path_dirs().into_iter().find(|d| has_server(d)) {
        return Ok(dir);
    }
    highest_debian_bin_dir().ok_or(LocalPgError::NotFound)
}

fn has_server(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|p| dir.join(p).is_file())
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(text.trim()))
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

/// The `/usr/lib/postgresql/<major>/bin` with the highest major that has a server.
fn highest_debian_bin_dir() -> Option<PathBuf> {
    let entries = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

pub(super) fn find_psql(bin_dir: &Path) -> Result<PathBuf, LocalPgError> {
    let own = bin_dir.join("psql");
    if own.is_file() {
        return Ok(own);
    }
    path_dirs()
        .into_iter()
        .map(|d| d.join("psql"))
        .find(|p| p.is_file())
        .ok_or_else(|| LocalPgError::NoPsql(bin_dir.to_path_buf()))
}

pub(super) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// (uid, gid) of an OS user, via the reentrant `getpwnam_r`.
pub(super) fn os_user(name: &str) -> Option<(u32, u32)> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value for this plain C struct.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf.len()` is the buffer's real size;
    // on success `result` points at `pwd`, whose strings live in `buf`.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name is a NUL-terminated string inside `buf`.
    let found = unsafe { CStr::from_ptr(pwd.pw_name) };
    (found.to_bytes() == name.as_bytes()).then_some((pwd.pw_uid, pwd.pw_gid))
}
