//! NVIDIA's management library (NVML), loaded at run time — never linked — to learn whether
//! there is an NVIDIA driver and GPU, the devices' names, and their free and total memory
//! (the default VRAM budget, `tessera doctor`, `tessera status`). NVML ships with the driver
//! (`libnvidia-ml.so.1` on Linux, `nvml.dll` on Windows), so it answers even where the CUDA
//! runtime is missing. Its device numbers follow PCI order, as CUDA's do unless
//! `CUDA_VISIBLE_DEVICES` or `CUDA_DEVICE_ORDER` reorder them.

use std::ffi::{CStr, c_char, c_int, c_uint, c_ulonglong, c_void};

/// NVML's library file.
pub fn library_name() -> &'static str {
    if cfg!(windows) {
        "nvml.dll"
    } else {
        "libnvidia-ml.so.1"
    }
}

type NvmlDevice = *mut c_void;

#[repr(C)]
#[derive(Default)]
struct NvmlMemory {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

/// One device's memory, as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    pub name: String,
    pub total: u64,
    pub free: u64,
}

/// An initialised NVML (shut down on drop).
pub struct Nvml {
    library: libloading::Library,
}

// SAFETY: NVML is thread-safe (its documentation says every entry point may be called from any
// thread); the handle only holds the library.
unsafe impl Send for Nvml {}
unsafe impl Sync for Nvml {}

impl Nvml {
    /// Loads and initialises NVML; `Err` says why not, in a few words.
    pub fn open() -> Result<Nvml, String> {
        // SAFETY: NVML is the NVIDIA driver's own library; loading it runs no code of ours.
        let library = unsafe { libloading::Library::new(library_name()) }
            .map_err(|_| format!("{} not found", library_name()))?;
        let nvml = Nvml { library };
        // SAFETY: nvmlInit_v2 takes no arguments and returns a status code.
        let status = unsafe { nvml.call::<unsafe extern "C" fn() -> c_int>(b"nvmlInit_v2\0") }
            .map(|init| unsafe { init() })?;
        if status != 0 {
            // Not initialised: dropping must not shut it down.
            let text = nvml.error_text(status);
            std::mem::forget(nvml);
            return Err(format!("NVML did not start: {text}"));
        }
        Ok(nvml)
    }

    /// How many NVIDIA devices the driver sees.
    pub fn device_count(&self) -> Result<u32, String> {
        let mut count: c_uint = 0;
        // SAFETY: nvmlDeviceGetCount_v2(unsigned int*) writes the count.
        let status = unsafe {
            self.call::<unsafe extern "C" fn(*mut c_uint) -> c_int>(b"nvmlDeviceGetCount_v2\0")?(
                &mut count,
            )
        };
        self.check(status)?;
        Ok(count)
    }

    /// Device `index`'s name and memory.
    pub fn memory(&self, index: u32) -> Result<DeviceMemory, String> {
        let mut device: NvmlDevice = std::ptr::null_mut();
        // SAFETY: nvmlDeviceGetHandleByIndex_v2(unsigned int, nvmlDevice_t*) writes a handle.
        let status = unsafe {
            self.call::<unsafe extern "C" fn(c_uint, *mut NvmlDevice) -> c_int>(
                b"nvmlDeviceGetHandleByIndex_v2\0",
            )?(index, &mut device)
        };
        self.check(status)?;
        let mut memory = NvmlMemory::default();
        // SAFETY: nvmlDeviceGetMemoryInfo(nvmlDevice_t, nvmlMemory_t*) fills the struct,
        // whose layout (three unsigned long long) `NvmlMemory` repeats.
        let status = unsafe {
            self.call::<unsafe extern "C" fn(NvmlDevice, *mut NvmlMemory) -> c_int>(
                b"nvmlDeviceGetMemoryInfo\0",
            )?(device, &mut memory)
        };
        self.check(status)?;
        let mut name = [0 as c_char; 96];
        // SAFETY: nvmlDeviceGetName(nvmlDevice_t, char*, unsigned int) writes a NUL-terminated
        // string of at most `length` bytes (96 is NVML's documented maximum).
        let status = unsafe {
            self.call::<unsafe extern "C" fn(NvmlDevice, *mut c_char, c_uint) -> c_int>(
                b"nvmlDeviceGetName\0",
            )?(device, name.as_mut_ptr(), name.len() as c_uint)
        };
        let name = if status == 0 {
            // SAFETY: NVML terminated the string inside the buffer.
            unsafe { CStr::from_ptr(name.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        } else {
            format!("NVIDIA GPU {index}")
        };
        Ok(DeviceMemory {
            name,
            total: memory.total,
            free: memory.free,
        })
    }

    /// A function of the library.
    ///
    /// # Safety
    /// `T` must be the symbol's C signature.
    unsafe fn call<T: Copy>(&self, symbol: &[u8]) -> Result<T, String> {
        // SAFETY: the caller vouches for the signature.
        unsafe { self.library.get::<T>(symbol) }
            .map(|s| *s)
            .map_err(|_| {
                format!(
                    "{} lacks {}",
                    library_name(),
                    String::from_utf8_lossy(&symbol[..symbol.len() - 1])
                )
            })
    }

    fn check(&self, status: c_int) -> Result<(), String> {
        if status == 0 {
            Ok(())
        } else {
            Err(self.error_text(status))
        }
    }

    fn error_text(&self, status: c_int) -> String {
        // SAFETY: nvmlErrorString(nvmlReturn_t) returns a static NUL-terminated string.
        let text = unsafe {
            self.call::<unsafe extern "C" fn(c_int) -> *const c_char>(b"nvmlErrorString\0")
        }
        .ok()
        .map(|f| unsafe { f(status) })
        .filter(|p| !p.is_null())
        .map(|p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
        text.unwrap_or_else(|| format!("NVML error {status}"))
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: nvmlShutdown balances the nvmlInit_v2 of `open`.
        if let Ok(shutdown) =
            unsafe { self.call::<unsafe extern "C" fn() -> c_int>(b"nvmlShutdown\0") }
        {
            unsafe { shutdown() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_driver_nvml_says_which_library_is_missing() {
        // SAFETY: probing for the library only.
        if unsafe { libloading::Library::new(library_name()) }.is_ok() {
            return; // a machine with the NVIDIA driver: nothing to check here
        }
        let error = Nvml::open().err().expect("no NVML here");
        assert_eq!(error, format!("{} not found", library_name()));
    }
}
