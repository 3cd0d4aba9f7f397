//! Load over the real socket: 8 clients × 20 jobs each, pipelined four deep, on the tiny
//! model. Every job gets exactly one terminal message, after its `Accepted` and on its own
//! connection; every result is byte for byte what a lone client gets for the same input; no
//! job is lost or duplicated; and the daemon's memory comes back to its idle level. The
//! figures (time, peak memory) are printed for the hardening report, not asserted.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tessera::cli::client::Client;
use tessera_e2e::{Daemon, RssSampler, mib, test_image};
use tessera_protocol::paths::SocketAddress;
use tessera_protocol::{Channels, Image, JobParams, Message, SampleFormat, Submit, Transfer};

const CLIENTS: usize = 8;
const JOBS_PER_CLIENT: usize = 20;
/// Jobs each client keeps submitted ahead of its results.
const WINDOW: usize = 4;
/// A hang guard, far above the few seconds the test takes: a lost terminal message would
/// otherwise block a client forever.
const HANG_GUARD: Duration = Duration::from_secs(600);
/// How far above its idle level the daemon's memory may stay once the clients are gone.
const MEMORY_SLACK: u64 = 8 << 20;

fn params(scale: f32) -> JobParams {
    JobParams::upscaler_only(scale, Some("tiny-x4".into()))
}

/// Inputs in several layouts, sample formats, transfers and scales.
fn variants() -> Vec<(Image, JobParams)> {
    let rgb = test_image(64, 48);
    let widen = |image: &Image, channels: Channels, sample: SampleFormat, transfer| {
        let pixels = image.data.chunks(3);
        let data = pixels
            .enumerate()
            .flat_map(|(i, px)| {
                let alpha = (i * 7 % 256) as u8;
                let samples: Vec<u8> = match channels {
                    Channels::Gray => vec![px[0]],
                    Channels::Rgba => vec![px[0], px[1], px[2], alpha],
                    Channels::Bgra => vec![px[2], px[1], px[0], alpha],
                    _ => px.to_vec(),
                };
                samples.into_iter().flat_map(move |v| match sample {
                    SampleFormat::U16 => (u16::from(v) * 257).to_le_bytes().to_vec(),
                    SampleFormat::F32 => (f32::from(v) / 255.0).to_le_bytes().to_vec(),
                    _ => vec![v],
                })
            })
            .collect();
        Image {
            channels,
            sample,
            transfer,
            data,
            ..image.clone()
        }
    };
    vec![
        (rgb.clone(), params(4.0)),
        (
            widen(&rgb, Channels::Rgba, SampleFormat::U16, Transfer::Srgb),
            params(2.5),
        ),
        (
            widen(
                &test_image(48, 48),
                Channels::Gray,
                SampleFormat::F32,
                Transfer::Linear,
            ),
            params(4.0),
        ),
        (
            widen(
                &test_image(32, 56),
                Channels::Bgra,
                SampleFormat::U8,
                Transfer::Srgb,
            ),
            params(3.0),
        ),
    ]
}

/// What one client saw: (job, variant, terminal message) per job.
type Terminals = Vec<(u64, usize, Message)>;

fn run_client(address: &SocketAddress, index: usize, inputs: &[(Image, JobParams)]) -> Terminals {
    let mut client = Client::connect(address, &format!("load-{index}")).unwrap();
    let mut submitted = 0;
    let mut requests: HashMap<u64, usize> = HashMap::new();
    let mut jobs: HashMap<u64, usize> = HashMap::new();
    let mut terminals = Terminals::new();
    while terminals.len() < JOBS_PER_CLIENT {
        while submitted < JOBS_PER_CLIENT && requests.len() + jobs.len() - terminals.len() < WINDOW
        {
            let variant = (index + submitted) % inputs.len();
            let (image, params) = inputs[variant].clone();
            let request = submitted as u64;
            client
                .send(&Message::Submit(Submit {
                    request,
                    image,
                    params,
                }))
                .unwrap();
            requests.insert(request, variant);
            submitted += 1;
        }
        match client.read().unwrap() {
            Message::Accepted(a) => {
                let variant = requests
                    .remove(&a.request)
                    .expect("one Accepted per request");
                assert!(jobs.insert(a.job, variant).is_none(), "job {} twice", a.job);
            }
            Message::Progress(p) => {
                assert!(
                    jobs.contains_key(&p.job),
                    "progress of job {} before its Accepted",
                    p.job
                );
                assert!(
                    !terminals.iter().any(|(job, ..)| *job == p.job),
                    "progress of job {} after its end",
                    p.job
                );
            }
            message @ (Message::Done(_) | Message::Failed(_)) => {
                let job = match &message {
                    Message::Done(d) => d.job,
                    Message::Failed(f) => f.job,
                    _ => unreachable!(),
                };
                let variant = *jobs
                    .get(&job)
                    .unwrap_or_else(|| panic!("an end of job {job}, which this client never had"));
                assert!(
                    !terminals.iter().any(|(j, ..)| *j == job),
                    "a second end of job {job}"
                );
                terminals.push((job, variant, message));
            }
            other => panic!("client {index}: unexpected {other:?}"),
        }
    }
    // A status request is answered after everything already queued for this client: nothing
    // more may come for its jobs.
    client.send(&Message::GetStatus).unwrap();
    match client.read().unwrap() {
        Message::Status(_) => {}
        other => panic!("client {index}: {other:?} after all its jobs ended"),
    }
    terminals
}

/// Waits until only `clients` connections remain (the daemon has seen the others leave).
fn wait_for_clients(probe: &mut Client, clients: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe.status().unwrap().clients != clients {
        assert!(Instant::now() < deadline, "clients did not leave");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn eight_clients_of_twenty_jobs_each_lose_nothing_and_match_a_lone_client() {
    let daemon = Daemon::prepare("[upscale]\ntile = 32\noverlap = 4\n").start();
    let inputs = variants();
    let mut probe = daemon.client();
    let references: Vec<Image> = inputs
        .iter()
        .map(|(image, params)| {
            probe
                .upscale(image.clone(), params.clone(), |_| {})
                .unwrap()
                .image
        })
        .collect();
    // A second round, so that the idle level includes whatever the first jobs warmed up.
    for (image, params) in &inputs {
        probe
            .upscale(image.clone(), params.clone(), |_| {})
            .unwrap();
    }
    let idle = daemon.rss_bytes();

    let sampler = RssSampler::start(daemon.pid());
    let started = Instant::now();
    let (sender, results) = mpsc::channel();
    for index in 0..CLIENTS {
        let (sender, address, inputs) = (sender.clone(), daemon.address(), inputs.clone());
        std::thread::spawn(move || {
            let outcome = std::panic::catch_unwind(|| run_client(&address, index, &inputs))
                .map_err(|e| {
                    e.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                });
            let _ = sender.send((index, outcome));
        });
    }
    drop(sender);
    let mut all_jobs = HashSet::new();
    for _ in 0..CLIENTS {
        let (index, outcome) = results
            .recv_timeout(HANG_GUARD)
            .expect("every client finishes (a lost terminal message hangs one)");
        let terminals = outcome.unwrap_or_else(|e| panic!("client {index}: {e}"));
        assert_eq!(terminals.len(), JOBS_PER_CLIENT);
        for (job, variant, message) in terminals {
            assert!(all_jobs.insert(job), "job {job} reached two clients");
            match message {
                Message::Done(done) => assert!(
                    done.image == references[variant],
                    "client {index}, job {job}: the result differs from a lone client's"
                ),
                other => panic!("client {index}, job {job} failed: {other:?}"),
            }
        }
    }
    let elapsed = started.elapsed();
    let peak = sampler.peak();
    assert_eq!(all_jobs.len(), CLIENTS * JOBS_PER_CLIENT);

    wait_for_clients(&mut probe, 1);
    let status = probe.status().unwrap();
    assert_eq!((status.running, status.queued), (None, 0));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = daemon.rss_bytes();
    while after > idle + MEMORY_SLACK && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        after = daemon.rss_bytes();
    }
    eprintln!(
        "load: {CLIENTS} clients × {JOBS_PER_CLIENT} jobs = {} jobs in {:.1} s; daemon memory: \
         idle {}, peak {}, after {}",
        all_jobs.len(),
        elapsed.as_secs_f64(),
        mib(idle),
        mib(peak),
        mib(after)
    );
    assert!(
        after <= idle + MEMORY_SLACK,
        "memory stayed at {} after the load (idle {}, peak {})",
        mib(after),
        mib(idle),
        mib(peak)
    );
}
