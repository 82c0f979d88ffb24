//! Acks in batches (docs/architecture.md, section 3.3): a job's delivery is acked only after its
//! outcome is recorded and its events confirmed, as before, but the acks of jobs that finish
//! close together travel as one `basic.ack` with `multiple` set. A multiple ack covers every
//! unsettled delivery up to its tag, so it is sent only up to the lowest delivery still in
//! flight: every delivery it covers has finished. A finished delivery behind one still in
//! flight waits at most [`HOLD`] for the gap to close, then is acked alone.
//!
//! For a quorum queue each ack frame is a command through its Raft log; one frame for many jobs
//! is most of what the broker saves.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::options::BasicAckOptions;
use lapin::types::DeliveryTag;
use lapin::Channel;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How long a finished delivery waits for the deliveries before it to finish too.
const HOLD: Duration = Duration::from_millis(10);

/// What the runner is told about one delivery of its channel.
#[derive(Debug)]
enum Note {
    /// Taken from the consumer (in tag order): in flight until acked or settled.
    Received(DeliveryTag),
    /// Done: ack it.
    Finished(DeliveryTag),
    /// Nacked or rejected by its own task: no longer the runner's to ack.
    Settled(DeliveryTag),
    /// Ack what finished, then stop.
    Close(oneshot::Sender<AckStats>),
}

/// What a runner sent, told when it closes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckStats {
    /// Deliveries acked.
    pub acked: u64,
    /// `basic.ack` frames sent for them.
    pub frames: u64,
}

/// The acks of one consumer channel (clones share them). Every delivery taken from the
/// channel's consumers must be noted as received before its job runs, and end as finished or
/// settled.
#[derive(Debug, Clone)]
pub struct Acks {
    notes: mpsc::UnboundedSender<Note>,
}

impl Acks {
    pub fn start(channel: Channel) -> Self {
        let (notes, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(channel, queue));
        Self { notes }
    }

    pub fn received(&self, tag: DeliveryTag) {
        let _ = self.notes.send(Note::Received(tag));
    }

    /// Acks the delivery (soon, maybe with others). Failures are logged; the broker then
    /// redelivers, and the idempotency record answers the redelivery.
    pub fn finished(&self, tag: DeliveryTag) {
        let _ = self.notes.send(Note::Finished(tag));
    }

    /// The delivery was nacked or rejected: call only once that frame was sent.
    pub fn settled(&self, tag: DeliveryTag) {
        let _ = self.notes.send(Note::Settled(tag));
    }

    /// Sends every ack still held and stops; later notes are ignored (their deliveries are
    /// redelivered). Returns what it sent over its life.
    pub async fn close(&self) -> AckStats {
        let (done, closed) = oneshot::channel();
        if self.notes.send(Note::Close(done)).is_err() {
            return AckStats::default();
        }
        closed.await.unwrap_or_default()
    }
}

/// The deliveries taken and not yet acked or settled, by tag: `None` while in flight, else
/// when it finished.
type Outstanding = BTreeMap<DeliveryTag, Option<Instant>>;

async fn run(channel: Channel, mut queue: mpsc::UnboundedReceiver<Note>) {
    let mut sender = Sender {
        channel,
        stats: AckStats::default(),
    };
    let mut outstanding = Outstanding::new();
    let mut closed = None;
    while closed.is_none() {
        let oldest_held = outstanding.values().flatten().min().copied();
        let note = match oldest_held {
            Some(since) => tokio::select! {
                note = queue.recv() => note,
                _ = tokio::time::sleep_until(since + HOLD) => {
                    sender.send(&mut outstanding, HOLD).await;
                    continue;
                }
            },
            None => queue.recv().await,
        };
        let Some(note) = note else { break };
        closed = take(&mut outstanding, note);
        while let (None, Ok(note)) = (&closed, queue.try_recv()) {
            closed = take(&mut outstanding, note);
        }
        sender.send(&mut outstanding, HOLD).await;
    }
    // Closing: whatever finished is acked now.
    sender.send(&mut outstanding, Duration::ZERO).await;
    if let Some(done) = closed {
        let _ = done.send(sender.stats);
    }
}

/// Notes one delivery's news; returns the closer's reply channel on `Close`.
fn take(outstanding: &mut Outstanding, note: Note) -> Option<oneshot::Sender<AckStats>> {
    match note {
        Note::Received(tag) => {
            outstanding.insert(tag, None);
        }
        Note::Finished(tag) => {
            outstanding.insert(tag, Some(Instant::now()));
        }
        Note::Settled(tag) => {
            outstanding.remove(&tag);
        }
        Note::Close(done) => return Some(done),
    }
    None
}

struct Sender {
    channel: Channel,
    stats: AckStats,
}

impl Sender {
    /// Acks the finished deliveries at the front in one frame, and those behind a gap that
    /// have waited `hold` each alone.
    async fn send(&mut self, outstanding: &mut Outstanding, hold: Duration) {
        let now = Instant::now();
        let front: Vec<DeliveryTag> = outstanding
            .iter()
            .take_while(|(_, finished)| finished.is_some())
            .map(|(tag, _)| *tag)
            .collect();
        if let Some(&last) = front.last() {
            for tag in &front {
                outstanding.remove(tag);
            }
            self.ack(last, front.len()).await;
        }
        let overdue: Vec<DeliveryTag> = outstanding
            .iter()
            .filter(|(_, finished)| finished.is_some_and(|at| at + hold <= now))
            .map(|(tag, _)| *tag)
            .collect();
        for tag in overdue {
            outstanding.remove(&tag);
            self.ack(tag, 1).await;
        }
    }

    /// Acks `count` deliveries up to `tag` (`multiple` when more than one).
    async fn ack(&mut self, tag: DeliveryTag, count: usize) {
        let multiple = count > 1;
        crate::telemetry::acks_sent(multiple);
        match self.channel.basic_ack(tag, BasicAckOptions { multiple }).await {
            Ok(()) => {
                self.stats.acked += count as u64;
                self.stats.frames += 1;
            }
            Err(err) => {
                tracing::error!(error.message = %err, delivery_tag = tag, multiple, "Could not ack; the broker will redeliver.")
            }
        }
    }
}
