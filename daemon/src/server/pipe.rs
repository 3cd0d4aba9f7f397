//! Windows named pipes: who may open the daemon's pipe, who is at the other end of a
//! connection, and how a connection's reads are cut short (named pipes have no read timeout).
//!
//! A named pipe created without a security descriptor gets the default one, which lets every
//! user of the machine (Everyone, and the anonymous account) open it for reading. The daemon's
//! pipe gets a protected DACL instead, `D:P(A;;GA;;;<user SID>)`: one entry that grants the
//! user running the daemon everything, nothing inherited, so every other account, Everyone and
//! anonymous included, is refused when it opens the pipe. SYSTEM and the administrators are not
//! listed either: an administrator can still take ownership, as with any of the user's files.
//! The listener also rejects remote clients (`PIPE_REJECT_REMOTE_CLIENTS`, set by
//! `interprocess`), and each accepted connection's process is checked to run as the same user.

use interprocess::local_socket::Stream;
use interprocess::os::windows::security_descriptor::SecurityDescriptor;
use std::io;
use std::os::windows::io::{AsHandle, AsRawHandle, BorrowedHandle};
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, HLOCAL, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertSecurityDescriptorToStringSecurityDescriptorW, ConvertSidToStringSidW, GetSecurityInfo,
    SDDL_REVISION_1, SE_KERNEL_OBJECT,
};
use windows_sys::Win32::Security::{
    DACL_SECURITY_INFORMATION, GetTokenInformation, PSECURITY_DESCRIPTOR, TOKEN_QUERY, TOKEN_USER,
    TokenUser,
};
use windows_sys::Win32::System::IO::CancelIoEx;
use windows_sys::Win32::System::Pipes::{DisconnectNamedPipe, GetNamedPipeClientProcessId};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
};

/// The DACL, in SDDL, that lets only the account `sid` open a pipe.
pub fn owner_only_sddl(sid: &str) -> String {
    format!("D:P(A;;GA;;;{sid})")
}

/// A security descriptor that lets only the user running this process open the pipe.
pub fn owner_only_descriptor() -> io::Result<SecurityDescriptor> {
    descriptor_for(&current_user_sid()?)
}

/// The security descriptor that lets only the account `sid` open a pipe.
pub fn descriptor_for(sid: &str) -> io::Result<SecurityDescriptor> {
    let wide = widestring::U16CString::from_str(owner_only_sddl(sid))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    SecurityDescriptor::deserialize(&wide)
}

/// The string SID (`S-1-5-21-…`) of the user running this process.
pub fn current_user_sid() -> io::Result<String> {
    // SAFETY: the pseudo-handle of the current process needs no closing and is always valid.
    user_sid_of_process(unsafe { GetCurrentProcess() })
}

/// Whether the process at the other end of a connection runs as this process's user. A peer
/// whose process cannot be opened or whose token cannot be read is not.
pub fn peer_is_same_user(stream: &Stream) -> bool {
    let peer = || -> io::Result<String> {
        let mut pid = 0u32;
        // SAFETY: the handle is the server end of a connected pipe, owned by `stream`.
        check(unsafe { GetNamedPipeClientProcessId(pipe_handle(stream), &mut pid) })?;
        // SAFETY: OpenProcess has no preconditions; a null result is an error.
        let process = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
        if process.is_null() {
            return Err(io::Error::last_os_error());
        }
        let process = Handle(process);
        user_sid_of_process(process.0)
    };
    match (peer(), current_user_sid()) {
        (Ok(peer), Ok(me)) => peer == me,
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("cannot tell which user a client runs as: {e}");
            false
        }
    }
}

/// The DACL of a pipe handle (opened with `READ_CONTROL`), in SDDL.
pub fn dacl_sddl(handle: BorrowedHandle<'_>) -> io::Result<String> {
    let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: only the descriptor is asked for; the out-pointers for the parts not asked for
    // may be null. The descriptor is freed with LocalFree below.
    let status = unsafe {
        GetSecurityInfo(
            raw(handle),
            SE_KERNEL_OBJECT,
            DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut descriptor,
        )
    };
    if status != 0 {
        return Err(io::Error::from_raw_os_error(status as i32));
    }
    let descriptor = Local(descriptor);
    let mut text: *mut u16 = std::ptr::null_mut();
    // SAFETY: the descriptor came from GetSecurityInfo; the string is freed with LocalFree.
    check(unsafe {
        ConvertSecurityDescriptorToStringSecurityDescriptorW(
            descriptor.0,
            SDDL_REVISION_1,
            DACL_SECURITY_INFORMATION,
            &mut text,
            std::ptr::null_mut(),
        )
    })?;
    let text = Local(text.cast());
    // SAFETY: the function wrote a NUL-terminated UTF-16 string.
    Ok(unsafe { wide_to_string(text.0.cast()) })
}

/// Ends the connection at once: the client end is closed and a read waiting on this end
/// returns an error. How a deadline stops a connection that never speaks.
pub fn disconnect(stream: &Stream) {
    let handle = pipe_handle(stream);
    // SAFETY: the handle is the server end of a pipe, owned by `stream` for this call. Both
    // calls only fail when there is nothing to disconnect or cancel.
    unsafe {
        DisconnectNamedPipe(handle);
        CancelIoEx(handle, std::ptr::null());
    }
}

fn user_sid_of_process(process: HANDLE) -> io::Result<String> {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: `process` is a valid process handle; the token is closed by `Handle`.
    check(unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut token) })?;
    let token = Handle(token);
    let mut size = 0u32;
    // SAFETY: a first call with no buffer asks for the size.
    unsafe { GetTokenInformation(token.0, TokenUser, std::ptr::null_mut(), 0, &mut size) };
    // u64 elements: TOKEN_USER needs pointer alignment.
    let mut buffer = vec![0u64; (size as usize).div_ceil(8)];
    // SAFETY: the buffer holds `size` bytes, suitably aligned.
    check(unsafe {
        GetTokenInformation(
            token.0,
            TokenUser,
            buffer.as_mut_ptr().cast(),
            size,
            &mut size,
        )
    })?;
    // SAFETY: GetTokenInformation filled a TOKEN_USER whose SID points into the buffer.
    let sid = unsafe { (*buffer.as_ptr().cast::<TOKEN_USER>()).User.Sid };
    let mut text: *mut u16 = std::ptr::null_mut();
    // SAFETY: `sid` is valid while the buffer lives; the string is freed with LocalFree.
    check(unsafe { ConvertSidToStringSidW(sid, &mut text) })?;
    let text = Local(text.cast());
    // SAFETY: the function wrote a NUL-terminated UTF-16 string.
    Ok(unsafe { wide_to_string(text.0.cast()) })
}

fn raw(handle: BorrowedHandle<'_>) -> HANDLE {
    handle.as_raw_handle()
}

/// The pipe handle of a connection (a local socket is always a named pipe on Windows).
fn pipe_handle(stream: &Stream) -> HANDLE {
    let Stream::NamedPipe(pipe) = stream;
    raw(pipe.as_handle())
}

fn check(ok: windows_sys::core::BOOL) -> io::Result<()> {
    if ok == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// # Safety
/// `text` points at a NUL-terminated UTF-16 string.
unsafe fn wide_to_string(text: *const u16) -> String {
    // SAFETY: as the caller promises.
    unsafe { widestring::U16CStr::from_ptr_str(text) }.to_string_lossy()
}

/// A kernel handle closed on drop.
struct Handle(HANDLE);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle was opened for this value and is closed once.
        unsafe { CloseHandle(self.0) };
    }
}

/// Memory the system allocated with LocalAlloc, freed on drop.
struct Local(HLOCAL);

impl Drop for Local {
    fn drop(&mut self) {
        // SAFETY: the pointer came from a function documented to allocate with LocalAlloc.
        unsafe { LocalFree(self.0) };
    }
}
