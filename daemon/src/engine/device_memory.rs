//! A GPU's memory over time, for the benchmarks and the tile batch: the free memory of the
//! device an execution provider runs on, and a sampler that records the peak in use while a
//! benchmark runs. Read through NVML (`nvml.rs`); ONNX Runtime itself does not report its
//! device memory, and the CPU execution provider has none. NVML counts every process's memory
//! on the device.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::ExecutionProvider;
use super::nvml::Nvml;

/// Samples a device's memory in use every few milliseconds on a thread until dropped.
pub struct PeakSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
    baseline: u64,
    /// The device's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub device: String,
}

impl PeakSampler {
    /// Starts sampling CUDA device `index` every `every`; `Err` says why it cannot be read.
    pub fn start(index: u32, every: Duration) -> Result<PeakSampler, String> {
        let nvml = Nvml::open()?;
        let first = nvml.memory(index)?;
        let baseline = first.total - first.free;
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(baseline));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(m) = nvml.memory(index) {
                        peak.fetch_max(m.total - m.free, Ordering::Relaxed);
                    }
                    std::thread::sleep(every);
                }
            })
        };
        Ok(PeakSampler {
            stop,
            peak,
            thread: Some(thread),
            baseline,
            device: first.name,
        })
    }

    /// The peak in use so far and what was in use when sampling began, in bytes.
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

/// The free memory of the device `ep` runs on, where it can be read (CUDA).
pub fn free_bytes(ep: ExecutionProvider) -> Option<u64> {
    match ep {
        ExecutionProvider::Cuda { device_id } => {
            super::cuda_device_memory(device_id).map(|m| m.free).ok()
        }
        _ => None,
    }
}
