//! The few calls of ONNX Runtime's C API that plugin execution providers need and the `ort`
//! crate does not wrap: a device's metadata (the provider's own facts about it, such as
//! OpenVINO's `ov_device` and `FULL_DEVICE_NAME`, and the hardware's, such as a GPU's memory),
//! the hardware's PCI vendor id, and appending a provider for chosen devices to a session
//! builder held by `&mut` (ort's `with_devices` consumes the builder). Everything else goes
//! through `ort` (`Environment::register_ep_library`, `Environment::devices`).

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char};

use ort::AsPointer;
use ort::device::Device;
use ort::session::builder::SessionBuilder;

/// Key/value pairs that ONNX Runtime owns (`OrtKeyValuePairs`), copied out.
fn pairs(kvps: *const ort::sys::OrtKeyValuePairs) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if kvps.is_null() {
        return out;
    }
    let api = ort::api();
    let mut keys: *const *const c_char = std::ptr::null();
    let mut values: *const *const c_char = std::ptr::null();
    let mut count = 0usize;
    // SAFETY: `kvps` is a live key/value set owned by the device (it lives as long as the
    // environment); the arrays it hands back have `count` entries of NUL-terminated strings.
    unsafe {
        (api.GetKeyValuePairs)(kvps, &mut keys, &mut values, &mut count);
        if keys.is_null() || values.is_null() {
            return out;
        }
        for i in 0..count {
            let (k, v) = (*keys.add(i), *values.add(i));
            if k.is_null() || v.is_null() {
                continue;
            }
            out.insert(
                CStr::from_ptr(k).to_string_lossy().into_owned(),
                CStr::from_ptr(v).to_string_lossy().into_owned(),
            );
        }
    }
    out
}

/// What the provider says about one of its devices (`EpDevice_EpMetadata`).
pub fn provider_metadata(device: &Device<'_>) -> BTreeMap<String, String> {
    // SAFETY: the device pointer comes from the live environment.
    pairs(unsafe { (ort::api().EpDevice_EpMetadata)(device.ptr()) })
}

/// What ONNX Runtime found about the hardware (`HardwareDevice_Metadata`: on Windows a GPU's
/// DXGI facts, e.g. its dedicated memory).
pub fn hardware_metadata(device: &Device<'_>) -> BTreeMap<String, String> {
    let hardware = device.hardware_device();
    // SAFETY: as above.
    pairs(unsafe { (ort::api().HardwareDevice_Metadata)(hardware.ptr()) })
}

/// The hardware's PCI vendor id (0x8086 Intel, 0x10de NVIDIA, 0x1002 AMD), 0 when unknown.
pub fn vendor_id(device: &Device<'_>) -> u32 {
    let hardware = device.hardware_device();
    // SAFETY: as above.
    unsafe { (ort::api().HardwareDevice_VendorId)(hardware.ptr()) }
}

/// Appends the provider of `device` to `builder` with `options` (the provider's own keys,
/// without the `<EpName>.` prefix `with_devices` wants).
pub fn append_for_device(
    builder: &mut SessionBuilder,
    env: &ort::environment::Environment,
    device: &Device<'_>,
    options: &[(String, String)],
) -> Result<(), String> {
    let to_c = |s: &str| CString::new(s).map_err(|_| format!("{s:?} holds a NUL byte"));
    let keys = options
        .iter()
        .map(|(k, _)| to_c(k))
        .collect::<Result<Vec<_>, _>>()?;
    let values = options
        .iter()
        .map(|(_, v)| to_c(v))
        .collect::<Result<Vec<_>, _>>()?;
    let key_ptrs: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr()).collect();
    let value_ptrs: Vec<*const c_char> = values.iter().map(|v| v.as_ptr()).collect();
    let devices = [device.ptr()];
    // SAFETY: the session options and environment are alive (borrowed), the device belongs to
    // that environment, and the key and value arrays hold `len` NUL-terminated strings that
    // outlive the call (ONNX Runtime copies them).
    let status = unsafe {
        (ort::api().SessionOptionsAppendExecutionProvider_V2)(
            builder.ptr_mut(),
            env.ptr().cast_mut(),
            devices.as_ptr(),
            devices.len(),
            key_ptrs.as_ptr(),
            value_ptrs.as_ptr(),
            key_ptrs.len(),
        )
    };
    status_result(status)
}

/// An `OrtStatus` as a result (and released).
pub(super) fn status_result(status: ort::sys::OrtStatusPtr) -> Result<(), String> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status owns a NUL-terminated message until it is released.
    let message = unsafe { CStr::from_ptr((api.GetErrorMessage)(status.0)) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: released once, after its message was copied.
    unsafe { (api.ReleaseStatus)(status.0) };
    Err(message)
}
