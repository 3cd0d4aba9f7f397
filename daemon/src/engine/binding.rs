//! Network calls through ONNX Runtime's I/O binding, so that tensors can stay where a session
//! computes between calls, and a count of the bytes that cross between host arrays and
//! ONNX Runtime.
//!
//! A [`Resident`] is an f32 tensor that ONNX Runtime holds where a session wants it: in device
//! memory on an accelerator, from the CPU allocator on the CPU execution provider (where
//! binding it costs nothing either). A [`BoundCall`] runs one session with any mix of host
//! arrays and residents as inputs, and hands each output back either as a host array or as a
//! resident; a resident output of one network bound as the input of the next never visits
//! host memory. The code path is the same on every execution provider, which is what lets
//! the CPU tests prove what a GPU run does.
//!
//! [`Traffic`] counts what crosses: every host array bound as an input is an upload, every
//! output taken as a host array a download, residents count nothing. Each call reports its own
//! traffic, and the process keeps a running total ([`total`]), which the other network calls
//! (plain `Session::run` with host arrays) add to through [`note`].

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int};
use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use ort::AsPointer;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::{DynTensor, DynTensorValueType, DynValue, Tensor, ValueType};

use super::ep_api::status_result;
use super::{EngineError, SharedSession};

/// Bytes between host arrays and ONNX Runtime, and the network calls they belong to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub calls: u64,
    /// Host → runtime (inputs given as host arrays, residents made from host arrays).
    pub uploaded: u64,
    /// Runtime → host (outputs taken as host arrays).
    pub downloaded: u64,
}

impl Traffic {
    pub fn bytes(&self) -> u64 {
        self.uploaded + self.downloaded
    }
}

impl std::ops::AddAssign for Traffic {
    fn add_assign(&mut self, other: Traffic) {
        self.calls += other.calls;
        self.uploaded += other.uploaded;
        self.downloaded += other.downloaded;
    }
}

/// What was added since `earlier` (zero where a counter started again, e.g. a new model set).
impl std::ops::Sub for Traffic {
    type Output = Traffic;
    fn sub(self, earlier: Traffic) -> Traffic {
        Traffic {
            calls: self.calls.saturating_sub(earlier.calls),
            uploaded: self.uploaded.saturating_sub(earlier.uploaded),
            downloaded: self.downloaded.saturating_sub(earlier.downloaded),
        }
    }
}

/// The process's running total (one ONNX Runtime environment per process).
static TOTAL: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// Everything every network call of this process moved so far.
pub fn total() -> Traffic {
    Traffic {
        calls: TOTAL[0].load(Ordering::Relaxed),
        uploaded: TOTAL[1].load(Ordering::Relaxed),
        downloaded: TOTAL[2].load(Ordering::Relaxed),
    }
}

/// Adds one network call's traffic to the running total.
pub fn note(call: Traffic) {
    TOTAL[0].fetch_add(call.calls, Ordering::Relaxed);
    TOTAL[1].fetch_add(call.uploaded, Ordering::Relaxed);
    TOTAL[2].fetch_add(call.downloaded, Ordering::Relaxed);
}

/// The traffic of one plain call (`Session::run`: every input from a host array, every output
/// into one), noted in the running total.
pub fn note_host_call(uploaded: usize, downloaded: usize) -> Traffic {
    let call = Traffic {
        calls: 1,
        uploaded: uploaded as u64,
        downloaded: downloaded as u64,
    };
    note(call);
    call
}

/// An f32 tensor held by ONNX Runtime where a session placed it (see the module docs).
pub struct Resident {
    value: DynTensor,
    shape: Vec<usize>,
}

impl Resident {
    fn new(value: DynValue) -> Result<Resident, String> {
        let shape = match value.dtype() {
            ValueType::Tensor { shape, .. } => shape.iter().map(|&d| d as usize).collect(),
            other => return Err(format!("{other:?} is not a tensor")),
        };
        let value = value
            .downcast::<DynTensorValueType>()
            .map_err(|e| e.to_string())?;
        Ok(Resident { value, shape })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Its size in bytes.
    pub fn bytes(&self) -> u64 {
        4 * self.shape.iter().product::<usize>() as u64
    }

    /// Where ONNX Runtime keeps it, e.g. `Cpu` or `Cuda`.
    pub fn device(&self) -> String {
        self.value
            .memory_info()
            .allocation_device()
            .as_str()
            .to_owned()
    }
}

impl std::fmt::Debug for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Resident({:?} on {})", self.shape, self.device())
    }
}

/// Where a session wants its inputs and puts its outputs.
struct Placement {
    inputs: HashMap<String, MemoryInfo<'static>>,
    outputs: HashMap<String, MemoryInfo<'static>>,
}

impl Placement {
    fn of(session: &Session) -> Result<Placement, String> {
        let api = ort::api();
        let input_names: Vec<String> = session
            .inputs()
            .iter()
            .map(|i| i.name().to_owned())
            .collect();
        let output_names: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_owned())
            .collect();
        let read = |names: &[String], outputs: bool| -> Result<_, String> {
            let mut infos = vec![std::ptr::null(); names.len()];
            // SAFETY: the session is alive (borrowed) and `infos` has one slot per input or
            // output, as the API requires; the pointers it fills belong to the session.
            let status = unsafe {
                if outputs {
                    (api.SessionGetMemoryInfoForOutputs)(
                        session.ptr(),
                        infos.as_mut_ptr(),
                        infos.len(),
                    )
                } else {
                    (api.SessionGetMemoryInfoForInputs)(
                        session.ptr(),
                        infos.as_mut_ptr(),
                        infos.len(),
                    )
                }
            };
            status_result(status)?;
            names
                .iter()
                .zip(infos)
                .map(|(name, info)| Ok((name.clone(), device_memory(info)?)))
                .collect::<Result<HashMap<_, _>, String>>()
        };
        Ok(Placement {
            inputs: read(&input_names, false)?,
            outputs: read(&output_names, true)?,
        })
    }
}

/// The device (name and id) of a session's memory info, as an owned default-memory info.
fn device_memory(info: *const ort::sys::OrtMemoryInfo) -> Result<MemoryInfo<'static>, String> {
    if info.is_null() {
        return Err("ONNX Runtime gave no memory info".into());
    }
    let api = ort::api();
    let mut name: *const c_char = std::ptr::null();
    let mut id: c_int = 0;
    // SAFETY: `info` is a valid memory info owned by the session; the name is a static string.
    unsafe {
        status_result((api.MemoryInfoGetName)(info, &mut name))?;
        status_result((api.MemoryInfoGetId)(info, &mut id))?;
    }
    // SAFETY: MemoryInfoGetName returned a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    let mut device_type = ort::sys::OrtMemoryInfoDeviceType::OrtMemoryInfoDeviceType_CPU;
    // SAFETY: as above.
    unsafe { (api.MemoryInfoGetDeviceType)(info, &mut device_type) };
    // Host memory whatever its allocator is called: a plugin's CPU device (OpenVINO's) names
    // its own, which ONNX Runtime cannot create a memory info for by name.
    let device = if name == AllocationDevice::CPU.as_str()
        || device_type == ort::sys::OrtMemoryInfoDeviceType::OrtMemoryInfoDeviceType_CPU
    {
        AllocationDevice::CPU
    } else {
        AllocationDevice::new(&name)
    };
    MemoryInfo::new(device, id, AllocatorType::Device, MemoryType::Default)
        .map_err(|e| e.to_string())
}

fn host_memory() -> Result<MemoryInfo<'static>, String> {
    MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Device,
        MemoryType::CPUOutput,
    )
    .map_err(|e| e.to_string())
}

/// An owned f32 tensor of `array` in host memory.
fn host_tensor(array: ArrayViewD<'_, f32>) -> Result<Tensor<f32>, String> {
    let shape: Vec<usize> = array.shape().to_vec();
    let data: Vec<f32> = array.iter().copied().collect();
    Tensor::from_array((shape, data)).map_err(|e| e.to_string())
}

/// `array` placed where `session` wants its input `input`, once: a resident to bind in later
/// calls (of this session or of another that wants it on the same device). Returns the
/// resident and the upload it took.
pub fn upload(
    session: &SharedSession,
    model: &str,
    input: &str,
    array: ArrayViewD<'_, f32>,
) -> Result<(Resident, Traffic), EngineError> {
    let err = |e: String| EngineError::ort(model, e);
    let memory = {
        let session = session.lock().unwrap_or_else(|e| e.into_inner());
        Placement::of(&session)
            .map_err(err)?
            .inputs
            .remove(input)
            .ok_or_else(|| err(format!("the graph has no input `{input}`")))?
    };
    let host = host_tensor(array.view()).map_err(err)?;
    let device = memory.allocation_device();
    let value = if device == AllocationDevice::CPU {
        host.into_dyn()
    } else {
        host.to(device, memory.device_id())
            .map_err(|e| err(e.to_string()))?
            .into_dyn()
    };
    let traffic = Traffic {
        calls: 0,
        uploaded: 4 * array.len() as u64,
        downloaded: 0,
    };
    note(traffic);
    Ok((Resident::new(value).map_err(err)?, traffic))
}

/// How an output is wanted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Host,
    Resident,
}

/// One call of a session with bound inputs and outputs (see the module docs).
pub struct BoundCall<'s> {
    session: &'s SharedSession,
    model: &'s str,
    placement: Placement,
    binding: IoBinding,
    outputs: Vec<(String, Keep)>,
    uploaded: u64,
    /// The bound inputs' names and shapes, hashed (a call of new shapes may shrink the arena).
    shapes: std::collections::hash_map::DefaultHasher,
}

impl<'s> BoundCall<'s> {
    pub fn new(session: &'s SharedSession, model: &'s str) -> Result<BoundCall<'s>, EngineError> {
        let s = session.lock().unwrap_or_else(|e| e.into_inner());
        let placement = Placement::of(&s).map_err(|e| EngineError::ort(model, e))?;
        let binding = s.create_binding().map_err(|e| EngineError::ort(model, e))?;
        drop(s);
        Ok(BoundCall {
            session,
            model,
            placement,
            binding,
            outputs: Vec::new(),
            uploaded: 0,
            shapes: Default::default(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> EngineError {
        EngineError::ort(self.model, e)
    }

    /// Binds a host array (copied now: an upload).
    pub fn host_input(
        &mut self,
        name: &str,
        array: ArrayViewD<'_, f32>,
    ) -> Result<(), EngineError> {
        let tensor = host_tensor(array.view()).map_err(|e| self.err(e))?;
        self.binding
            .bind_input(name, &tensor)
            .map_err(|e| self.err(format!("input `{name}`: {e}")))?;
        self.uploaded += 4 * array.len() as u64;
        self.note_shape(name, array.shape());
        Ok(())
    }

    /// Binds a resident (nothing crosses).
    pub fn resident_input(&mut self, name: &str, value: &Resident) -> Result<(), EngineError> {
        self.binding
            .bind_input(name, &value.value)
            .map_err(|e| self.err(format!("input `{name}`: {e}")))?;
        self.note_shape(name, value.shape());
        Ok(())
    }

    fn note_shape(&mut self, name: &str, shape: &[usize]) {
        use std::hash::{Hash, Hasher};
        name.hash(&mut self.shapes);
        shape.hash(&mut self.shapes);
        self.shapes.write_u8(0);
    }

    /// Asks for output `name` as a host array (a download).
    pub fn host_output(&mut self, name: &str) -> Result<(), EngineError> {
        let memory = host_memory().map_err(|e| self.err(e))?;
        self.bind_output(name, &memory, Keep::Host)
    }

    /// Asks for output `name` as a resident, left where the session produces it.
    pub fn resident_output(&mut self, name: &str) -> Result<(), EngineError> {
        let memory = self
            .placement
            .outputs
            .get(name)
            .cloned()
            .ok_or_else(|| self.err(format!("the graph has no output `{name}`")))?;
        self.bind_output(name, &memory, Keep::Resident)
    }

    fn bind_output(
        &mut self,
        name: &str,
        memory: &MemoryInfo<'_>,
        keep: Keep,
    ) -> Result<(), EngineError> {
        self.binding
            .bind_output_to_device(name, memory)
            .map_err(|e| self.err(format!("output `{name}`: {e}")))?;
        self.outputs.push((name.to_owned(), keep));
        Ok(())
    }

    /// Runs the session; the outputs in the order they were asked for.
    pub fn run(self) -> Result<BoundOutputs, EngineError> {
        let err = |e: String| EngineError::ort(self.model, e);
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let shapes = std::hash::Hasher::finish(&self.shapes).max(1);
        let mut result = session
            .run_binding(&self.binding, shapes)
            .map_err(|e| err(e.to_string()))?;
        let mut traffic = Traffic {
            calls: 1,
            uploaded: self.uploaded,
            downloaded: 0,
        };
        let mut values = Vec::with_capacity(self.outputs.len());
        for (name, keep) in &self.outputs {
            let value = result
                .remove(name.as_str())
                .ok_or_else(|| err(format!("the graph has no output `{name}`")))?;
            values.push(match keep {
                Keep::Resident => Output::Resident(Resident::new(value).map_err(err)?),
                Keep::Host => {
                    let array = value
                        .try_extract_array::<f32>()
                        .map_err(|e| err(format!("output `{name}`: {e}")))?
                        .to_owned();
                    traffic.downloaded += 4 * array.len() as u64;
                    Output::Host(array)
                }
            });
        }
        note(traffic);
        Ok(BoundOutputs { values, traffic })
    }
}

enum Output {
    Host(ArrayD<f32>),
    Resident(Resident),
    Taken,
}

/// What a [`BoundCall`] gave, and what crossed for it.
pub struct BoundOutputs {
    values: Vec<Output>,
    pub traffic: Traffic,
}

impl BoundOutputs {
    /// Output `index` (in the order asked for), asked for as a host array.
    pub fn host(&mut self, index: usize) -> ArrayD<f32> {
        match std::mem::replace(&mut self.values[index], Output::Taken) {
            Output::Host(a) => a,
            _ => panic!("output {index} was not asked for as a host array, or was taken"),
        }
    }

    /// Output `index`, asked for as a resident.
    pub fn resident(&mut self, index: usize) -> Resident {
        match std::mem::replace(&mut self.values[index], Output::Taken) {
            Output::Resident(r) => r,
            _ => panic!("output {index} was not asked for as a resident, or was taken"),
        }
    }
}

/// A resident's contents as a host array (a download), for tests and checks.
pub fn download(value: &Resident, model: &str) -> Result<ArrayD<f32>, EngineError> {
    let err = |e: String| EngineError::ort(model, e);
    let host = if value.device() == AllocationDevice::CPU.as_str() {
        value
            .value
            .try_extract_array::<f32>()
            .map_err(|e| err(e.to_string()))?
            .to_owned()
    } else {
        let tensor = value
            .value
            .to(AllocationDevice::CPU, 0)
            .map_err(|e| err(e.to_string()))?;
        tensor
            .try_extract_array::<f32>()
            .map_err(|e| err(e.to_string()))?
            .to_owned()
    };
    note(Traffic {
        calls: 0,
        uploaded: 0,
        downloaded: 4 * host.len() as u64,
    });
    host.into_shape_with_order(IxDyn(&value.shape))
        .map_err(|e| err(e.to_string()))
}
