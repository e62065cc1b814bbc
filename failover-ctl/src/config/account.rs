//! Users from the system's user database: who an exec probe runs as.

use std::ffi::CString;
use std::io;

/// The user an exec probe runs as: its uid and primary gid, with every supplementary group
/// dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptUser {
    /// The name as written (`script_user` or the probe's `user`).
    pub name: String,
    pub uid: u32,
    /// The user's primary group.
    pub gid: u32,
}

/// The longest passwd entry buffer tried before giving up (glibc answers ERANGE below it).
const MAX_ENTRY_BUFFER: usize = 1 << 20;

impl ScriptUser {
    /// The user called `name` in the user database (getpwnam_r: /etc/passwd or whatever NSS is
    /// configured to ask), `None` when there is none.
    pub fn lookup(name: &str) -> io::Result<Option<Self>> {
        let Ok(c_name) = CString::new(name) else {
            return Ok(None);
        };
        let mut buffer = vec![0_u8; 1024];
        loop {
            // SAFETY: `passwd` is plain data; all-zero is a valid value that getpwnam_r overwrites.
            let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
            let mut found: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: every pointer is valid for the call and `buffer.len()` is its size; the
            // strings the entry points to live in `buffer`, and only the numbers are kept.
            let code = unsafe {
                libc::getpwnam_r(c_name.as_ptr(), &mut entry, buffer.as_mut_ptr().cast(), buffer.len(), &mut found)
            };
            match code {
                0 if found.is_null() => return Ok(None),
                0 => return Ok(Some(Self { name: name.to_owned(), uid: entry.pw_uid, gid: entry.pw_gid })),
                libc::ERANGE if buffer.len() < MAX_ENTRY_BUFFER => buffer.resize(buffer.len() * 2, 0),
                // POSIX lets "no such user" be reported as one of these instead of a null result.
                libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
                code => return Err(io::Error::from_raw_os_error(code)),
            }
        }
    }
}

/// The effective uid of this process: who the daemon runs as.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
