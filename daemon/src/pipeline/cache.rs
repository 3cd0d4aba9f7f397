//! What a re-run of the same picture can take from the job before it: the daemon keeps each
//! stage's pre-upscaled canvas and its VAE posterior, keyed by content (a SHA-256 of the stage
//! input, the upscaler file and tiling, the canvas size; for the posterior also the VAE file,
//! its precision and the VAE tiling), in memory bounded in bytes, the least recently used
//! going first. A second job on the same image with another seed, creativity, resemblance or
//! prompt skips ESRGAN, Lanczos and the encode, and computes the same bytes as a cold run: the
//! kept arrays are the ones a cold run computes.

use ndarray::{Array3, Array4, ArrayView3};
use sha2::{Digest, Sha256};

use crate::pipeline::clarity::stage::Reuse;

/// A content digest.
pub type Digest32 = [u8; 32];

enum Value {
    Image(Array3<f32>),
    Latents(Array4<f32>, Array4<f32>),
}

impl Value {
    fn bytes(&self) -> usize {
        let floats = match self {
            Value::Image(a) => a.len(),
            Value::Latents(m, l) => m.len() + l.len(),
        };
        floats * std::mem::size_of::<f32>()
    }
}

/// Arrays by digest, at most `budget` bytes of them, least recently used evicted first.
pub struct ReuseCache {
    budget: usize,
    used: usize,
    /// Oldest use first.
    entries: Vec<(Digest32, Value)>,
    pub hits: u64,
    pub misses: u64,
}

impl ReuseCache {
    pub fn new(budget: usize) -> ReuseCache {
        ReuseCache {
            budget,
            used: 0,
            entries: Vec::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry under `key`, now the most recently used.
    fn take_fresh(&mut self, key: &Digest32) -> Option<&Value> {
        let Some(at) = self.entries.iter().position(|(k, _)| k == key) else {
            self.misses += 1;
            return None;
        };
        self.hits += 1;
        let entry = self.entries.remove(at);
        self.entries.push(entry);
        self.entries.last().map(|(_, v)| v)
    }

    fn put(&mut self, key: Digest32, value: Value) {
        let bytes = value.bytes();
        if let Some(at) = self.entries.iter().position(|(k, _)| *k == key) {
            let (_, old) = self.entries.remove(at);
            self.used -= old.bytes();
        }
        if bytes > self.budget {
            return;
        }
        while self.used + bytes > self.budget {
            let (_, evicted) = self.entries.remove(0);
            self.used -= evicted.bytes();
        }
        self.used += bytes;
        self.entries.push((key, value));
    }

    pub fn image(&mut self, key: &Digest32) -> Option<Array3<f32>> {
        match self.take_fresh(key)? {
            Value::Image(a) => Some(a.clone()),
            Value::Latents(..) => None,
        }
    }

    pub fn keep_image(&mut self, key: Digest32, image: &Array3<f32>) {
        self.put(key, Value::Image(image.clone()));
    }

    pub fn latents(&mut self, key: &Digest32) -> Option<(Array4<f32>, Array4<f32>)> {
        match self.take_fresh(key)? {
            Value::Latents(m, l) => Some((m.clone(), l.clone())),
            Value::Image(_) => None,
        }
    }

    pub fn keep_latents(&mut self, key: Digest32, mean: &Array4<f32>, logvar: &Array4<f32>) {
        self.put(key, Value::Latents(mean.clone(), logvar.clone()));
    }
}

/// The default budget: a sixteenth of the machine's memory, between 256 MiB and 2 GiB (a
/// 4096² canvas is 192 MiB, its posterior 8 MiB).
pub fn default_budget() -> u64 {
    const MIB: u64 = 1 << 20;
    let total = total_memory().unwrap_or(4096 * MIB);
    (total / 16).clamp(256 * MIB, 2048 * MIB)
}

/// The machine's memory in bytes, where the platform says (Linux: `/proc/meminfo`).
fn total_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The identity of what turns a stage input into its canvas and posterior: the upscaler and
/// VAE files (path, size, modification time), their settings; anything that changes the
/// arrays must be part of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Makers {
    pub upscaler: String,
    pub vae: String,
}

/// The daemon's cache as one job's stages see it.
pub struct JobReuse<'a> {
    pub cache: &'a mut ReuseCache,
    pub makers: Makers,
    image_key: Digest32,
    latents_key: Digest32,
}

impl<'a> JobReuse<'a> {
    pub fn new(cache: &'a mut ReuseCache, makers: Makers) -> JobReuse<'a> {
        JobReuse {
            cache,
            makers,
            image_key: [0; 32],
            latents_key: [0; 32],
        }
    }
}

/// SHA-256 of an image's shape and samples (little-endian f32).
pub fn digest_of(input: ArrayView3<f32>) -> Digest32 {
    let mut hasher = Sha256::new();
    for d in input.shape() {
        hasher.update((*d as u64).to_le_bytes());
    }
    let contiguous = input.as_standard_layout();
    let samples = contiguous.as_slice().expect("standard layout");
    let mut buffer = Vec::with_capacity(4096 * 4);
    for chunk in samples.chunks(4096) {
        buffer.clear();
        buffer.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        hasher.update(&buffer);
    }
    hasher.finalize().into()
}

fn combine(parts: &[&[u8]]) -> Digest32 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

impl Reuse for JobReuse<'_> {
    fn begin(&mut self, input: ArrayView3<f32>, canvas: (usize, usize)) {
        let content = digest_of(input);
        let size = [canvas.0 as u64, canvas.1 as u64]
            .map(u64::to_le_bytes)
            .concat();
        self.image_key = combine(&[b"image", &content, self.makers.upscaler.as_bytes(), &size]);
        self.latents_key = combine(&[b"latents", &self.image_key, self.makers.vae.as_bytes()]);
    }

    fn image(&mut self) -> Option<Array3<f32>> {
        self.cache.image(&self.image_key)
    }

    fn keep_image(&mut self, image: &Array3<f32>) {
        self.cache.keep_image(self.image_key, image);
    }

    fn latents(&mut self) -> Option<(Array4<f32>, Array4<f32>)> {
        self.cache.latents(&self.latents_key)
    }

    fn keep_latents(&mut self, mean: &Array4<f32>, logvar: &Array4<f32>) {
        self.cache.keep_latents(self.latents_key, mean, logvar);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(value: f32, side: usize) -> Array3<f32> {
        Array3::from_elem((3, side, side), value)
    }

    #[test]
    fn the_least_recently_used_goes_first_and_the_budget_holds() {
        // Each 3 × 8 × 8 image is 768 bytes: the budget holds two.
        let mut cache = ReuseCache::new(2 * 768 + 100);
        cache.keep_image([1; 32], &image(1.0, 8));
        cache.keep_image([2; 32], &image(2.0, 8));
        assert_eq!(cache.used(), 2 * 768);
        // Using 1 makes 2 the oldest: the third entry evicts 2.
        assert_eq!(cache.image(&[1; 32]).unwrap()[[0, 0, 0]], 1.0);
        cache.keep_image([3; 32], &image(3.0, 8));
        assert_eq!(cache.len(), 2);
        assert!(cache.used() <= 2 * 768 + 100);
        assert!(cache.image(&[2; 32]).is_none(), "2 was evicted");
        assert_eq!(cache.image(&[1; 32]).unwrap()[[0, 0, 0]], 1.0);
        assert_eq!(cache.image(&[3; 32]).unwrap()[[0, 0, 0]], 3.0);
        // An entry larger than the whole budget is not kept and evicts nothing.
        cache.keep_image([4; 32], &image(4.0, 16));
        assert!(cache.image(&[4; 32]).is_none());
        assert_eq!(cache.len(), 2);
        // Replacing an entry counts its bytes once.
        cache.keep_image([3; 32], &image(5.0, 8));
        assert_eq!(cache.used(), 2 * 768);
        assert_eq!(cache.image(&[3; 32]).unwrap()[[0, 0, 0]], 5.0);
        let mean = Array4::from_elem((1, 4, 2, 2), 0.5);
        cache.keep_latents([6; 32], &mean, &mean);
        assert_eq!(cache.latents(&[6; 32]).unwrap().0, mean);
        assert!(cache.image(&[6; 32]).is_none(), "kinds are not confused");
    }

    #[test]
    fn keys_follow_the_content_the_canvas_and_the_makers() {
        let mut cache = ReuseCache::new(1 << 20);
        let makers = Makers {
            upscaler: "esrgan a".into(),
            vae: "vae a".into(),
        };
        let input = image(0.25, 4);
        let canvas = image(0.75, 8);
        {
            let mut reuse = JobReuse::new(&mut cache, makers.clone());
            reuse.begin(input.view(), (8, 8));
            assert!(reuse.image().is_none());
            reuse.keep_image(&canvas);
            assert_eq!(reuse.image().unwrap(), canvas);
        }
        let mut probe = |input: &Array3<f32>, size, makers: &Makers| {
            let mut reuse = JobReuse::new(&mut cache, makers.clone());
            reuse.begin(input.view(), size);
            reuse.image().is_some()
        };
        assert!(probe(&input, (8, 8), &makers));
        let mut other = input.clone();
        other[[2, 3, 3]] = 0.2500001;
        assert!(!probe(&other, (8, 8), &makers), "one sample differs");
        assert!(!probe(&input, (8, 16), &makers), "another canvas");
        let upscaler = Makers {
            upscaler: "esrgan b".into(),
            ..makers.clone()
        };
        assert!(!probe(&input, (8, 8), &upscaler), "another upscaler");
        let mut reuse = JobReuse::new(&mut cache, makers.clone());
        reuse.begin(input.view(), (8, 8));
        let mean = Array4::from_elem((1, 4, 1, 1), 1.0);
        reuse.keep_latents(&mean, &mean);
        let vae = Makers {
            vae: "vae b".into(),
            ..makers
        };
        let mut reuse = JobReuse::new(&mut cache, vae);
        reuse.begin(input.view(), (8, 8));
        assert!(reuse.latents().is_none(), "another VAE");
        assert!(
            reuse.image().is_some(),
            "the canvas does not depend on the VAE"
        );
    }
}
