//! One client's queue of outgoing messages, drained by that client's writer
//! thread. A slow or stuck client never blocks the engine or other clients,
//! and what waits for it stays bounded:
//! - progress events are coalesced: an unsent event of a job is replaced by the job's next
//!   one while both are of the same stage and phase, so a reader that falls behind still gets
//!   the last event of every phase (its tiles all done), and what waits is bounded by the
//!   number of phases;
//! - results not yet written count as the client's jobs, so the per-client
//!   job limit also caps the results waiting here (see `Hub::submit`);
//! - replies to requests are capped: the connection stops reading requests
//!   while [`MAX_PENDING`] messages wait (see [`Outbox::wait_for_room`]), so a
//!   client that sends without reading is slowed down by its own socket.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use tessera_protocol::Message;

/// Messages that may wait for one client before its requests stop being read.
pub const MAX_PENDING: usize = 64;

#[derive(Default)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Condvar,
    /// Signalled when messages leave the queue (or the outbox ends).
    room: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Message>,
    /// `Done` and `Failed` messages queued or being written, not yet sent whole.
    unsent_results: usize,
    /// No more messages will be queued; the writer stops once the queue is empty.
    closing: bool,
    /// The connection is gone; everything queued is dropped.
    dead: bool,
}

impl Outbox {
    /// Queues a message. A progress event replaces the job's last still-unsent one when that
    /// is of the same stage and phase.
    pub fn send(&self, message: Message) {
        let mut state = self.state.lock().expect("outbox lock");
        if state.closing || state.dead {
            return;
        }
        if let Message::Progress(progress) = &message
            && let Some(Message::Progress(pending)) = state
                .queue
                .iter_mut()
                .rev()
                .find(|m| matches!(m, Message::Progress(p) if p.job == progress.job))
            && (pending.stage, &pending.phase) == (progress.stage, &progress.phase)
        {
            *pending = progress.clone();
            return;
        }
        if is_result(&message) {
            state.unsent_results += 1;
        }
        state.queue.push_back(message);
        self.ready.notify_one();
    }

    /// The writer has sent `message` whole.
    pub fn written(&self, message: &Message) {
        if is_result(message) {
            let mut state = self.state.lock().expect("outbox lock");
            state.unsent_results = state.unsent_results.saturating_sub(1);
        }
    }

    /// Job results queued or being written: they count against the client's job limit.
    pub fn unsent_results(&self) -> usize {
        self.state.lock().expect("outbox lock").unsent_results
    }

    /// Waits while [`MAX_PENDING`] or more messages wait to be written, so that a client
    /// that sends requests without reading the replies gets no more read from it.
    /// Returns at once when the outbox is closing or dead.
    pub fn wait_for_room(&self) {
        let mut state = self.state.lock().expect("outbox lock");
        while state.queue.len() >= MAX_PENDING && !state.closing && !state.dead {
            state = self.room.wait(state).expect("outbox lock");
        }
    }

    /// Sends what is queued, then ends the writer (and so the connection).
    pub fn close(&self) {
        self.state.lock().expect("outbox lock").closing = true;
        self.ready.notify_all();
        self.room.notify_all();
    }

    /// The peer is gone: drop everything, now and later.
    pub fn kill(&self) {
        let mut state = self.state.lock().expect("outbox lock");
        state.dead = true;
        state.queue.clear();
        state.unsent_results = 0;
        self.ready.notify_all();
        self.room.notify_all();
    }

    pub fn is_dead(&self) -> bool {
        self.state.lock().expect("outbox lock").dead
    }

    /// The next message to write, waiting for one; `None` once closed and empty.
    pub fn next(&self) -> Option<Message> {
        let mut state = self.state.lock().expect("outbox lock");
        loop {
            if state.dead {
                return None;
            }
            if let Some(message) = state.queue.pop_front() {
                self.room.notify_all();
                return Some(message);
            }
            if state.closing {
                return None;
            }
            state = self.ready.wait(state).expect("outbox lock");
        }
    }

    /// Messages waiting to be written.
    pub fn pending(&self) -> usize {
        self.state.lock().expect("outbox lock").queue.len()
    }
}

fn is_result(message: &Message) -> bool {
    matches!(message, Message::Done(_) | Message::Failed(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::Progress;

    fn progress(job: u64, fraction: f32) -> Message {
        in_phase(job, "upscale", fraction)
    }

    fn in_phase(job: u64, phase: &str, fraction: f32) -> Message {
        Message::Progress(Progress {
            job,
            stage: 0,
            stages: 1,
            phase: phase.into(),
            step: 1,
            steps: 1,
            tile: 1,
            tiles: 1,
            fraction,
            eta_seconds: None,
            warnings: vec![],
        })
    }

    #[test]
    fn progress_is_coalesced_per_job_and_other_messages_keep_their_order() {
        let outbox = Outbox::default();
        outbox.send(progress(1, 0.1));
        outbox.send(progress(2, 0.1));
        outbox.send(progress(1, 0.5));
        outbox.send(Message::GetStatus);
        outbox.send(progress(1, 0.9));
        assert_eq!(outbox.pending(), 3);
        outbox.close();
        assert_eq!(outbox.next(), Some(progress(1, 0.9)));
        assert_eq!(outbox.next(), Some(progress(2, 0.1)));
        assert_eq!(outbox.next(), Some(Message::GetStatus));
        assert_eq!(outbox.next(), None);
    }

    #[test]
    fn the_last_event_of_each_phase_is_kept() {
        let outbox = Outbox::default();
        outbox.send(in_phase(1, "upscale", 0.1));
        outbox.send(in_phase(1, "upscale", 0.2));
        outbox.send(in_phase(1, "resize", 0.8));
        outbox.send(in_phase(1, "resize", 0.9));
        outbox.send(in_phase(2, "upscale", 0.5));
        outbox.send(in_phase(1, "resize", 0.95));
        outbox.close();
        assert_eq!(outbox.next(), Some(in_phase(1, "upscale", 0.2)));
        assert_eq!(outbox.next(), Some(in_phase(1, "resize", 0.95)));
        assert_eq!(outbox.next(), Some(in_phase(2, "upscale", 0.5)));
        assert_eq!(outbox.next(), None);
    }

    #[test]
    fn a_killed_outbox_drops_everything() {
        let outbox = Outbox::default();
        outbox.send(Message::GetStatus);
        outbox.kill();
        outbox.send(Message::Shutdown);
        assert_eq!(outbox.next(), None);
        assert!(outbox.is_dead());
    }

    fn failed(job: u64) -> Message {
        Message::Failed(tessera_protocol::Failed {
            job,
            error: tessera_protocol::ErrorInfo::new(tessera_protocol::ErrorKind::Cancelled, "x"),
        })
    }

    #[test]
    fn results_count_until_written() {
        let outbox = Outbox::default();
        outbox.send(failed(1));
        outbox.send(progress(2, 0.5));
        outbox.send(failed(2));
        assert_eq!(outbox.unsent_results(), 2);
        let first = outbox.next().unwrap();
        assert_eq!(outbox.unsent_results(), 2, "taken is not yet written");
        outbox.written(&first);
        assert_eq!(outbox.unsent_results(), 1);
        let progress = outbox.next().unwrap();
        outbox.written(&progress);
        assert_eq!(outbox.unsent_results(), 1);
        outbox.kill();
        assert_eq!(outbox.unsent_results(), 0);
    }

    #[test]
    fn a_full_outbox_holds_the_reader_until_the_writer_makes_room() {
        let outbox = std::sync::Arc::new(Outbox::default());
        for _ in 0..MAX_PENDING {
            outbox.send(Message::GetStatus);
        }
        let reader = {
            let outbox = outbox.clone();
            std::thread::spawn(move || outbox.wait_for_room())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!reader.is_finished(), "no room yet");
        outbox.next().unwrap();
        reader.join().unwrap();
        // A dead outbox never holds anyone.
        for _ in 0..MAX_PENDING {
            outbox.send(Message::GetStatus);
        }
        outbox.kill();
        outbox.wait_for_room();
    }

    #[test]
    fn the_writer_waits_for_messages() {
        let outbox = std::sync::Arc::new(Outbox::default());
        let writer = {
            let outbox = outbox.clone();
            std::thread::spawn(move || outbox.next())
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        outbox.send(Message::Shutdown);
        assert_eq!(writer.join().unwrap(), Some(Message::Shutdown));
    }
}
