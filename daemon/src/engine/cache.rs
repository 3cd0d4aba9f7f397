//! The session cache: the warm sessions kept for later jobs (least recently used first), every
//! session alive with what is known of it without its lock (name, placement, estimated bytes,
//! whether the running job used it), and a model's identity.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use sha2::{Digest, Sha256};

use super::{CompiledModel, EngineSession, Placement, SharedSession};

/// What the cache and the status know of a session without taking its lock (which a running
/// network holds for the length of its call).
#[derive(Debug)]
pub struct SessionInfo {
    pub name: String,
    state: Mutex<Placement>,
    bytes: AtomicU64,
    /// Run since the last [`super::Engine::warning_mark`] (in the running job).
    pub(super) used: AtomicBool,
}

impl SessionInfo {
    pub(super) fn new(name: &str, placement: &Placement, bytes: u64) -> SessionInfo {
        SessionInfo {
            name: name.to_owned(),
            state: Mutex::new(placement.clone()),
            bytes: AtomicU64::new(bytes),
            used: AtomicBool::new(false),
        }
    }

    pub fn placement(&self) -> Placement {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn on_accelerator(&self) -> bool {
        self.placement().is_accelerator()
    }

    /// On the CPU although an accelerator was there for it.
    pub fn fell_back(&self) -> bool {
        matches!(self.placement(), Placement::Cpu { reason: Some(_) })
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(super) fn note_run(&self) {
        self.used.store(true, Ordering::Relaxed);
    }

    pub(super) fn set_placement(&self, placement: Placement) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = placement;
    }
}

/// Identity of a model for the session cache.
pub(super) fn identity(model: &CompiledModel) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(&model.onnx);
    h.update(model.weights_folder.as_os_str().as_encoded_bytes());
    for f in &model.weight_files {
        h.update(f.as_os_str().as_encoded_bytes());
        if let Ok(stamp) = crate::store::FileStamp::read(f) {
            h.update(stamp.to_bytes());
        }
    }
    h.finalize().into()
}

/// Least-recently-used sessions; tiny, so a vector is the right structure. `alive` follows
/// every session created (weakly), so that what is held can be reported whoever holds it.
pub(super) struct SessionCache {
    capacity: usize,
    /// Least recently used first.
    pub entries: Vec<CacheEntry>,
    pub alive: Vec<(Arc<SessionInfo>, Weak<Mutex<EngineSession>>)>,
}

pub(super) struct CacheEntry {
    pub key: [u8; 32],
    pub info: Arc<SessionInfo>,
    pub session: SharedSession,
}

impl SessionCache {
    pub(super) fn new(capacity: usize) -> SessionCache {
        SessionCache {
            capacity,
            entries: Vec::new(),
            alive: Vec::new(),
        }
    }

    pub(super) fn get(&mut self, key: &[u8; 32]) -> Option<SharedSession> {
        let i = self.entries.iter().position(|e| e.key == *key)?;
        let entry = self.entries.remove(i);
        let session = entry.session.clone();
        self.entries.push(entry);
        Some(session)
    }

    pub(super) fn put(&mut self, key: [u8; 32], info: Arc<SessionInfo>, session: SharedSession) {
        self.entries.retain(|e| e.key != key);
        if self.entries.len() >= self.capacity {
            // Evicted sessions stay alive while a network still holds them.
            self.entries.remove(0);
        }
        self.entries.push(CacheEntry { key, info, session });
    }

    pub(super) fn note_alive(&mut self, info: Arc<SessionInfo>, session: &SharedSession) {
        self.prune();
        self.alive.push((info, Arc::downgrade(session)));
    }

    pub(super) fn prune(&mut self) {
        self.alive.retain(|(_, s)| s.strong_count() > 0);
    }
}
