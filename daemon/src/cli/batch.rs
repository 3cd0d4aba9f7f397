//! `tessera upscale a.png b.jpg … -o OUTDIR/` and `tessera upscale DIR -o OUTDIR/`: every file
//! through one daemon and its warm models, two jobs in flight so that the engine never waits
//! for the next file to be read, a progress line per file and one for the whole batch. Files
//! whose output exists are skipped unless `--overwrite`; a file that fails is reported at the
//! end and the others go on.

use super::client::{Client, ClientError};
use super::imagefile;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_protocol::{ErrorKind, JobId, JobParams, Message, Progress};

/// File extensions a folder is searched for.
const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "webp", "tif", "tiff"];

/// Jobs submitted ahead: the running one and the next.
const IN_FLIGHT: usize = 2;

/// One input and where its result goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub input: PathBuf,
    pub output: PathBuf,
}

/// Whether the command line asks for a batch: several inputs, a folder, or an output that is
/// a folder (existing, or written with a trailing separator).
pub fn is_batch(inputs: &[PathBuf], output: &Path) -> bool {
    let trailing = output
        .as_os_str()
        .to_string_lossy()
        .ends_with(std::path::is_separator);
    inputs.len() > 1 || inputs.iter().any(|i| i.is_dir()) || output.is_dir() || trailing
}

/// The files of a batch: each input file, and the images directly inside each input folder
/// (sorted by name); each result is written under `out_dir` with its input's file name.
pub fn plan(inputs: &[PathBuf], out_dir: &Path) -> anyhow::Result<Vec<Item>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", input.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && is_image_name(p))
                .collect();
            found.sort();
            if found.is_empty() {
                anyhow::bail!(
                    "{} holds no image ({})",
                    input.display(),
                    IMAGE_EXTENSIONS.join(", ")
                );
            }
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    Ok(files
        .into_iter()
        .map(|input| Item {
            output: out_dir.join(input.file_name().unwrap_or(input.as_os_str())),
            input,
        })
        .collect())
}

fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// How each file of a batch ended.
#[derive(Debug, Default)]
pub struct Outcome {
    pub written: usize,
    pub skipped: usize,
    pub failed: Vec<(PathBuf, String)>,
    pub cancelled: bool,
}

/// A job on the daemon and what the user sees of it.
struct Running {
    item: Item,
    bar: ProgressBar,
    fraction: f32,
}

/// Runs `items` on `client` with `params`; Ctrl-C (`interrupted`) cancels the jobs in flight
/// and submits no more.
pub fn run(
    client: &mut Client,
    items: Vec<Item>,
    params: &JobParams,
    overwrite: bool,
    interrupted: &AtomicBool,
    in_flight_jobs: &Mutex<Vec<JobId>>,
) -> Outcome {
    let mut outcome = Outcome::default();
    let multi = MultiProgress::new();
    let total = ProgressBar::new(items.len() as u64 * 1000);
    total.set_style(
        ProgressStyle::with_template("{msg:40} [{bar:32}] {percent:>3}% {elapsed_precise}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    let total = multi.add(total);
    total.enable_steady_tick(Duration::from_millis(120));
    let file_style =
        ProgressStyle::with_template("  {prefix:24!} {msg:30!} [{bar:24}] {percent:>3}%")
            .expect("the template is valid")
            .progress_chars("=> ");
    let count = items.len();
    let mut queue: VecDeque<Item> = items.into();
    let mut outputs_seen = HashSet::new();
    let mut running: HashMap<JobId, Running> = HashMap::new();
    let mut finished = 0usize;
    let say = |line: String| multi.suspend(|| println!("{line}"));
    let started = Instant::now();

    loop {
        // Keep IN_FLIGHT jobs on the daemon while there are files and no Ctrl-C.
        while running.len() < IN_FLIGHT && !interrupted.load(Ordering::SeqCst) {
            let Some(item) = queue.pop_front() else { break };
            if !outputs_seen.insert(item.output.clone()) {
                outcome.failed.push((
                    item.input.clone(),
                    format!(
                        "another input also writes {}; rename one of them",
                        item.output.display()
                    ),
                ));
                finished += 1;
                continue;
            }
            if item.output.exists() && !overwrite {
                say(format!(
                    "skipped {}: {} exists (--overwrite replaces it)",
                    item.input.display(),
                    item.output.display()
                ));
                outcome.skipped += 1;
                finished += 1;
                continue;
            }
            let submitted = image::ImageFormat::from_path(&item.output)
                .map_err(|_| {
                    imagefile::ImageFileError::UnknownFormat(item.output.clone()).to_string()
                })
                .and_then(|_| imagefile::read(&item.input).map_err(|e| e.to_string()))
                .and_then(|image| client.submit(image, params.clone()).map_err(describe));
            match submitted {
                Ok(accepted) => {
                    let bar = multi.add(ProgressBar::new(1000));
                    bar.set_style(file_style.clone());
                    bar.set_prefix(display_name(&item.input));
                    bar.set_message(if accepted.position > 0 {
                        "queued"
                    } else {
                        "starting"
                    });
                    in_flight_jobs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(accepted.job);
                    running.insert(
                        accepted.job,
                        Running {
                            item,
                            bar,
                            fraction: 0.0,
                        },
                    );
                }
                Err(message) => {
                    outcome.failed.push((item.input, message));
                    finished += 1;
                }
            }
        }
        let partial: f32 = running.values().map(|r| r.fraction).sum();
        total.set_position(((finished as f32 + partial) * 1000.0) as u64);
        total.set_message(format!("{finished} of {count} files"));
        if running.is_empty() {
            outcome.cancelled = interrupted.load(Ordering::SeqCst) && !queue.is_empty();
            break;
        }
        let message = match client.read() {
            Ok(message) => message,
            // A cancel that raced with the job's end.
            Err(ClientError::Daemon(e)) if e.kind == ErrorKind::UnknownJob => continue,
            Err(e) => {
                let text = describe(e);
                for (_, r) in running.drain() {
                    r.bar.finish_and_clear();
                    outcome.failed.push((r.item.input, text.clone()));
                }
                outcome.cancelled = interrupted.load(Ordering::SeqCst);
                break;
            }
        };
        let (job, ended) = match message {
            Message::Progress(p) => {
                if let Some(r) = running.get_mut(&p.job) {
                    r.fraction = p.fraction;
                    r.bar.set_position((p.fraction * 1000.0) as u64);
                    r.bar.set_message(progress_text(&p));
                }
                continue;
            }
            Message::Done(done) => (done.job, Ok(done)),
            Message::Failed(failed) => (failed.job, Err(failed.error)),
            _ => continue,
        };
        let Some(r) = running.remove(&job) else {
            continue;
        };
        in_flight_jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|j| *j != job);
        r.bar.finish_and_clear();
        multi.remove(&r.bar);
        finished += 1;
        match ended {
            Ok(done) => match imagefile::write(&done.image, &r.item.output) {
                Ok(note) => {
                    let seconds: f64 = done.timings.iter().map(|t| t.seconds).sum();
                    say(format!(
                        "{} → {} ({}×{}) in {seconds:.2} s{}",
                        r.item.input.display(),
                        r.item.output.display(),
                        done.image.width,
                        done.image.height,
                        note.map(|n| format!(" (note: {n})")).unwrap_or_default()
                    ));
                    outcome.written += 1;
                }
                Err(e) => outcome.failed.push((r.item.input, e.to_string())),
            },
            Err(e) if e.kind == ErrorKind::Cancelled => outcome.cancelled = true,
            Err(e) => outcome.failed.push((r.item.input, e.message)),
        }
    }
    total.finish_and_clear();
    say(format!(
        "{} written, {} skipped, {} failed of {count} files in {:.1} s",
        outcome.written,
        outcome.skipped,
        outcome.failed.len(),
        started.elapsed().as_secs_f64()
    ));
    outcome
}

/// The job's place in a few words, with the daemon's estimate of the time left.
pub fn progress_text(p: &Progress) -> String {
    let stage = if p.stages > 1 {
        format!("stage {}/{} ", p.stage + 1, p.stages)
    } else {
        String::new()
    };
    let eta = p
        .eta_seconds
        .map(|s| format!(", {} left", short_duration(s)))
        .unwrap_or_default();
    format!("{stage}{} {}/{}{eta}", p.phase, p.tile, p.tiles)
}

/// Seconds as "45 s", "3 min 20 s" or "1 h 05 min".
pub fn short_duration(seconds: f32) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

fn display_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn describe(error: ClientError) -> String {
    match error {
        ClientError::Daemon(e) => e.message,
        other => other.to_string(),
    }
}

/// Shared among the Ctrl-C handler and the batch: the jobs to cancel.
pub type InFlight = Arc<Mutex<Vec<JobId>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_gives_its_images_in_order_and_outputs_keep_their_names() {
        let temp = tempfile::tempdir().unwrap();
        let folder = temp.path().join("in");
        std::fs::create_dir(&folder).unwrap();
        for name in ["b.png", "a.JPG", "notes.txt", "c.tif"] {
            std::fs::write(folder.join(name), b"x").unwrap();
        }
        std::fs::create_dir(folder.join("sub.png")).unwrap();
        let single = temp.path().join("d.webp");
        let out = temp.path().join("out");
        let items = plan(&[folder.clone(), single.clone()], &out).unwrap();
        let inputs: Vec<&Path> = items.iter().map(|i| i.input.as_path()).collect();
        assert_eq!(
            inputs,
            [
                folder.join("a.JPG").as_path(),
                &folder.join("b.png"),
                &folder.join("c.tif"),
                &single
            ]
        );
        assert_eq!(items[1].output, out.join("b.png"));
        assert!(is_batch(&[folder], &out));
        assert!(is_batch(std::slice::from_ref(&single), Path::new("out/")));
        assert!(!is_batch(&[single], Path::new("out.png")));
        let empty = temp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(
            plan(&[empty], &out)
                .unwrap_err()
                .to_string()
                .contains("no image")
        );
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(short_duration(4.4), "4 s");
        assert_eq!(short_duration(200.0), "3 min 20 s");
        assert_eq!(short_duration(3900.0), "1 h 05 min");
    }
}
