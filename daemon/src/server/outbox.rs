//! One client's queue of outgoing messages, drained by that client's writer
//! thread. A slow or stuck client never blocks the engine or other clients:
//! its progress events are coalesced (only the newest per job is kept), so
//! what waits for it is bounded by one progress and one result per job.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use tessera_protocol::Message;

#[derive(Default)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Message>,
    /// No more messages will be queued; the writer stops once the queue is empty.
    closing: bool,
    /// The connection is gone; everything queued is dropped.
    dead: bool,
}

impl Outbox {
    /// Queues a message. A progress event replaces a still-unsent one for the same job.
    pub fn send(&self, message: Message) {
        let mut state = self.state.lock().expect("outbox lock");
        if state.closing || state.dead {
            return;
        }
        if let Message::Progress(progress) = &message
            && let Some(pending) = state
                .queue
                .iter_mut()
                .find(|m| matches!(m, Message::Progress(p) if p.job == progress.job))
        {
            *pending = message;
            return;
        }
        state.queue.push_back(message);
        self.ready.notify_one();
    }

    /// Sends what is queued, then ends the writer (and so the connection).
    pub fn close(&self) {
        self.state.lock().expect("outbox lock").closing = true;
        self.ready.notify_all();
    }

    /// The peer is gone: drop everything, now and later.
    pub fn kill(&self) {
        let mut state = self.state.lock().expect("outbox lock");
        state.dead = true;
        state.queue.clear();
        self.ready.notify_all();
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

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::Progress;

    fn progress(job: u64, fraction: f32) -> Message {
        Message::Progress(Progress {
            job,
            stage: 0,
            stages: 1,
            phase: "upscale".into(),
            step: 1,
            steps: 1,
            tile: 1,
            tiles: 1,
            fraction,
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
    fn a_killed_outbox_drops_everything() {
        let outbox = Outbox::default();
        outbox.send(Message::GetStatus);
        outbox.kill();
        outbox.send(Message::Shutdown);
        assert_eq!(outbox.next(), None);
        assert!(outbox.is_dead());
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
