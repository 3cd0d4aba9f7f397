//! How much memory an NVIDIA GPU has in use and free, read through NVML (the library that
//! comes with the NVIDIA driver, opened at run time: a machine without it simply has no
//! answer), and a sampler that records the peak while a benchmark runs. ONNX Runtime itself
//! does not report its device memory; the CPU execution provider has none.
//!
//! NVML counts a device's memory for every process on it, and numbers devices in PCI order,
//! which is CUDA's order unless `CUDA_VISIBLE_DEVICES` or `CUDA_DEVICE_ORDER` say otherwise.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A device's memory, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

/// `nvmlMemory_t`.
#[repr(C)]
#[derive(Default)]
struct NvmlMemory {
    total: u64,
    free: u64,
    used: u64,
}

type Init = unsafe extern "C" fn() -> c_int;
type HandleByIndex = unsafe extern "C" fn(c_uint, *mut *mut c_void) -> c_int;
type MemoryInfo = unsafe extern "C" fn(*mut c_void, *mut NvmlMemory) -> c_int;
type Name = unsafe extern "C" fn(*mut c_void, *mut c_char, c_uint) -> c_int;

/// One NVIDIA device opened through NVML.
pub struct Nvml {
    _library: libloading::Library,
    memory_info: MemoryInfo,
    name: Name,
    device: *mut c_void,
}

// SAFETY: NVML is thread-safe; the device handle is an opaque pointer NVML owns for the life
// of the library, which this value keeps open.
unsafe impl Send for Nvml {}
unsafe impl Sync for Nvml {}

fn library_names() -> &'static [&'static str] {
    if cfg!(windows) {
        &["nvml.dll"]
    } else {
        &["libnvidia-ml.so.1", "libnvidia-ml.so"]
    }
}

impl Nvml {
    /// NVML's device `index`, or why not (no driver library, no such device).
    pub fn open(index: u32) -> Result<Nvml, String> {
        let library = library_names()
            .iter()
            // SAFETY: loading the driver's own library runs its initialisers, which is what it
            // is for.
            .find_map(|name| unsafe { libloading::Library::new(*name) }.ok())
            .ok_or_else(|| "no NVIDIA driver library (NVML) on this machine".to_owned())?;
        // SAFETY: these are NVML's documented signatures.
        let (init, by_index, memory_info, name) = unsafe {
            let symbol = |name: &[u8]| format!("NVML has no {}", String::from_utf8_lossy(name));
            (
                *library
                    .get::<Init>(b"nvmlInit_v2\0")
                    .map_err(|_| symbol(b"nvmlInit_v2"))?,
                *library
                    .get::<HandleByIndex>(b"nvmlDeviceGetHandleByIndex_v2\0")
                    .map_err(|_| symbol(b"nvmlDeviceGetHandleByIndex_v2"))?,
                *library
                    .get::<MemoryInfo>(b"nvmlDeviceGetMemoryInfo\0")
                    .map_err(|_| symbol(b"nvmlDeviceGetMemoryInfo"))?,
                *library
                    .get::<Name>(b"nvmlDeviceGetName\0")
                    .map_err(|_| symbol(b"nvmlDeviceGetName"))?,
            )
        };
        // SAFETY: nvmlInit may be called any number of times.
        let status = unsafe { init() };
        if status != 0 {
            return Err(format!("NVML did not start (error {status})"));
        }
        let mut device = std::ptr::null_mut();
        // SAFETY: `device` receives an opaque handle.
        let status = unsafe { by_index(index, &mut device) };
        if status != 0 || device.is_null() {
            return Err(format!("NVML has no device {index} (error {status})"));
        }
        Ok(Nvml {
            _library: library,
            memory_info,
            name,
            device,
        })
    }

    /// The device's memory now.
    pub fn memory(&self) -> Result<DeviceMemory, String> {
        let mut m = NvmlMemory::default();
        // SAFETY: a valid handle and a struct of NVML's layout.
        let status = unsafe { (self.memory_info)(self.device, &mut m) };
        if status != 0 {
            return Err(format!("NVML could not read the memory (error {status})"));
        }
        Ok(DeviceMemory {
            total: m.total,
            free: m.free,
            used: m.used,
        })
    }

    /// e.g. `NVIDIA H100 80GB HBM3`.
    pub fn name(&self) -> String {
        let mut buf = [0 as c_char; 96];
        // SAFETY: a valid handle and a buffer of the given length.
        let status = unsafe { (self.name)(self.device, buf.as_mut_ptr(), buf.len() as c_uint) };
        if status != 0 {
            return String::new();
        }
        // SAFETY: NVML wrote a NUL-terminated string into the buffer.
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }
}

/// Samples a device's used memory every few milliseconds on a thread until stopped.
pub struct PeakSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
    baseline: u64,
}

impl PeakSampler {
    /// Starts sampling `nvml`'s device every `every`.
    pub fn start(nvml: Arc<Nvml>, every: Duration) -> PeakSampler {
        let baseline = nvml.memory().map_or(0, |m| m.used);
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(baseline));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(m) = nvml.memory() {
                        peak.fetch_max(m.used, Ordering::Relaxed);
                    }
                    std::thread::sleep(every);
                }
            })
        };
        PeakSampler {
            stop,
            peak,
            thread: Some(thread),
            baseline,
        }
    }

    /// The peak so far and what was in use when sampling began.
    pub fn peak(&self) -> (u64, u64) {
        (self.peak.load(Ordering::Relaxed), self.baseline)
    }
}

impl Drop for PeakSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The free memory of the device an execution provider runs on, where it can be read (CUDA).
pub fn free_bytes(ep: super::ExecutionProvider) -> Option<u64> {
    match ep {
        super::ExecutionProvider::Cuda { device_id } => Nvml::open(device_id.max(0) as u32)
            .and_then(|n| n.memory())
            .map(|m| m.free)
            .ok(),
        _ => None,
    }
}
