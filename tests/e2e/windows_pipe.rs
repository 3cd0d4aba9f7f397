//! Windows only (run under Wine in CI): who may open the daemon's named pipe. Its DACL, read
//! back from the pipe itself, grants the daemon's user alone; the same DACL written for another
//! account keeps this one out, for reading and for writing (on Windows: Wine does not check
//! pipes' DACLs).
#![cfg(windows)]

use interprocess::local_socket::{GenericNamespaced, ListenerOptions, ToNsName};
use interprocess::os::windows::local_socket::ListenerOptionsExt;
use std::io;
use std::os::windows::io::{AsHandle, FromRawHandle, OwnedHandle};
use tessera::server::pipe;
use tessera_e2e::Daemon;
use windows_sys::Win32::Foundation::{
    ERROR_ACCESS_DENIED, GENERIC_READ, GENERIC_WRITE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Storage::FileSystem::{CreateFileW, OPEN_EXISTING, READ_CONTROL};
use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};

/// Opens a pipe by its full name (`\\.\pipe\…`) with `access`.
fn open(path: &str, access: u32) -> io::Result<OwnedHandle> {
    let wide: Vec<u16> = path.encode_utf16().chain([0]).collect();
    // SAFETY: a NUL-terminated name; the other arguments are plain values or null.
    let handle = unsafe {
        CreateFileW(
            wide.as_ptr(),
            access,
            0,
            std::ptr::null(),
            OPEN_EXISTING,
            0,
            std::ptr::null_mut(),
        )
    };
    if handle == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a valid handle this function just opened.
    Ok(unsafe { OwnedHandle::from_raw_handle(handle) })
}

/// The entries of an SDDL DACL, e.g. `["A;;FA;;;S-1-5-21-…"]`.
fn aces(sddl: &str) -> Vec<String> {
    sddl.split('(')
        .skip(1)
        .map(|ace| ace.trim_end_matches(')').to_owned())
        .collect()
}

#[test]
fn the_pipe_grants_its_user_alone() {
    let daemon = Daemon::with_small_tiles();
    let handle = open(
        &daemon.address().to_string(),
        READ_CONTROL | GENERIC_READ | GENERIC_WRITE,
    )
    .unwrap();
    let sddl = pipe::dacl_sddl(handle.as_handle()).unwrap();
    let me = pipe::current_user_sid().unwrap();
    eprintln!("the daemon's pipe: {sddl} (this user: {me})");
    assert!(sddl.starts_with("D:P"), "inherits nothing: {sddl}");
    let entries = aces(&sddl);
    assert_eq!(entries.len(), 1, "{sddl}");
    assert!(
        entries[0].starts_with("A;") && entries[0].ends_with(&format!(";{me}")),
        "{sddl}"
    );
    // The connection was a real client: the daemon still serves the next one.
    drop(handle);
    assert!(daemon.client().status().is_ok());
}

/// A pipe named after this process and `tag`, with the DACL Tessera gives its pipe, but for the
/// account `sid`; returns its path.
fn pipe_for(sid: &str, tag: &str) -> (interprocess::local_socket::Listener, String) {
    let name = format!("tessera-e2e-{tag}-{}", std::process::id());
    let listener = ListenerOptions::new()
        .name(name.clone().to_ns_name::<GenericNamespaced>().unwrap())
        .security_descriptor(pipe::descriptor_for(sid).unwrap())
        .create_sync()
        .unwrap();
    (listener, format!(r"\\.\pipe\{name}"))
}

/// Whether this is Wine, which answers to `wine_get_version` in its ntdll.
fn under_wine() -> bool {
    // SAFETY: ntdll is loaded in every process; the names are NUL-terminated.
    unsafe {
        let ntdll = GetModuleHandleA(c"ntdll.dll".as_ptr().cast());
        !ntdll.is_null() && GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast()).is_some()
    }
}

#[test]
fn the_pipe_of_another_account_refuses_this_one() {
    if under_wine() {
        // Wine runs every program as one account and does not check a named pipe's DACL
        // when it is opened (a pipe whose DACL names another account opens as any other), so
        // the refusal itself is tested on Windows only; see docs/windows.md.
        eprintln!("SKIPPED under Wine: it does not enforce named pipes' DACLs");
        return;
    }
    // "Another user" played the other way round: the daemon's DACL written for another
    // account must keep this one out, for reading and for writing; written for this account,
    // it lets it in.
    let me = pipe::current_user_sid().unwrap();
    let someone_else = "S-1-5-21-1004336348-1177238915-682003330-1105";
    let (_ours, ours) = pipe_for(&me, "mine");
    let (_theirs, theirs) = pipe_for(someone_else, "theirs");
    assert!(open(&ours, GENERIC_READ | GENERIC_WRITE).is_ok());
    for access in [GENERIC_READ | GENERIC_WRITE, GENERIC_READ, GENERIC_WRITE] {
        let error = open(&theirs, access).expect_err("another account's pipe let this one in");
        assert_eq!(
            error.raw_os_error(),
            Some(ERROR_ACCESS_DENIED as i32),
            "{error}"
        );
    }
}
