//! The progress outbox: signed progress messages wait here until the broker took them,
//! on disk while the vehicle is offline, bounded, and handed out oldest first.
//!
//! On disk the outbox is one append-only log, `outbox.log`, of framed records:
//!
//! ```text
//! record = length: u32 LE ‖ body ‖ check: first 8 bytes of SHA-256(length ‖ body)
//! body   = 1 ‖ id: u64 LE ‖ kind: u8 ‖ message     (push; kind 0 transition, 1 byte count)
//!        | 2 ‖ id: u64 LE                          (ack: everything up to id was sent)
//!        | 3 ‖ id: u64 LE                          (drop: a byte count pushed out by overflow)
//!        | 4 ‖ next id: u64 LE ‖ dropped: u64 LE   (base, first record after compaction)
//! ```
//!
//! Opening replays the log. A record that is cut short or fails its check ends the replay
//! and the file is truncated there, so a kill at any instant leaves a readable outbox
//! holding every record written before the torn one. A transition is `fdatasync`ed before
//! [`Outbox::push`] returns; byte counts, acks and drops are not synced on their own
//! (the next transition's sync carries them): losing one costs a repeated or a missing
//! byte-count update, and the server applies each sequence number once. When acknowledged
//! records dominate the log it is rewritten with the live events only, atomically
//! ([`crate::trust_store::write_atomically`]).

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a queued message reports: a phase transition (never dropped) or a byte-count
/// update (dropped first when the outbox is full).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Transition,
    ByteCount,
}

/// A message waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    /// Outbox order; increases by one per push, across restarts.
    pub id: u64,
    pub kind: EventKind,
    /// The signed wire message.
    pub bytes: Vec<u8>,
}

/// Why the outbox refused an operation.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("the outbox holds {capacity} transitions and nothing it may drop")]
    Full { capacity: usize },
    #[error("a message of {size} bytes exceeds the outbox limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("acknowledging event {id}, but the outbox has only issued ids below {next}")]
    UnknownId { id: u64, next: u64 },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("compacting the outbox: {0}")]
    Compact(#[source] crate::trust_store::TrustStoreError),
}

/// Largest message the outbox accepts (signed progress events are a few hundred bytes).
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

const LOG_FILE: &str = "outbox.log";
/// The log is rewritten once it is at least this long and mostly acknowledged records.
const COMPACT_MIN_BYTES: u64 = 1 << 20;

/// The bounded, ordered outbox; see the module doc.
pub struct Outbox {
    capacity: usize,
    events: VecDeque<QueuedEvent>,
    next_id: u64,
    dropped: u64,
    log: Option<Log>,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("capacity", &self.capacity)
            .field("queued", &self.events.len())
            .field("next_id", &self.next_id)
            .field("dropped", &self.dropped)
            .field("log", &self.log)
            .finish()
    }
}

#[derive(Debug)]
struct Log {
    path: PathBuf,
    file: File,
    len: u64,
    compact_at: u64,
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, recovering what a previous run left, in
    /// order. A torn last record is discarded.
    pub fn open(dir: &Path, capacity: usize) -> Result<Outbox, OutboxError> {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let path = dir.join(LOG_FILE);
        let stored = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(io("reading", &path)(error)),
        };
        let mut outbox = Outbox::in_memory(capacity);
        let valid = outbox.replay(&stored);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("opening", &path))?;
        if (valid as u64) < stored.len() as u64 {
            file.set_len(valid as u64)
                .and_then(|()| file.sync_all())
                .map_err(io("truncating the torn tail of", &path))?;
        }
        // The log's directory entry must survive a power cut as well.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", dir))?;
        outbox.log = Some(Log {
            path,
            file,
            len: valid as u64,
            compact_at: COMPACT_MIN_BYTES,
        });
        outbox.compact_if_mostly_acknowledged()?;
        Ok(outbox)
    }

    /// An outbox that lives only in memory (the fleet simulator).
    pub fn in_memory(capacity: usize) -> Outbox {
        Outbox {
            capacity,
            events: VecDeque::new(),
            next_id: 1,
            dropped: 0,
            log: None,
        }
    }

    /// Queues a signed message and returns its id. A transition is durable before this
    /// returns. When full, the oldest byte-count event is dropped; if only transitions
    /// remain the push is refused with [`OutboxError::Full`] — a transition is never
    /// dropped.
    pub fn push(&mut self, kind: EventKind, bytes: Vec<u8>) -> Result<u64, OutboxError> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(OutboxError::TooLarge {
                size: bytes.len(),
                max: MAX_EVENT_BYTES,
            });
        }
        while self.events.len() >= self.capacity {
            let Some(oldest) = self
                .events
                .iter()
                .position(|event| event.kind == EventKind::ByteCount)
            else {
                return Err(OutboxError::Full {
                    capacity: self.capacity,
                });
            };
            let id = self.events[oldest].id;
            self.append(&Record::Drop(id), false)?;
            self.events.remove(oldest);
            self.dropped += 1;
        }
        let event = QueuedEvent {
            id: self.next_id,
            kind,
            bytes,
        };
        self.append(&Record::Push(event.clone()), kind == EventKind::Transition)?;
        self.next_id += 1;
        self.events.push_back(event);
        Ok(self.next_id - 1)
    }

    /// Up to `max` queued events, oldest first.
    pub fn peek(&self, max: usize) -> Vec<QueuedEvent> {
        self.events.iter().take(max).cloned().collect()
    }

    /// Removes every queued event up to and including `id` (they were sent).
    pub fn ack(&mut self, id: u64) -> Result<(), OutboxError> {
        if id >= self.next_id {
            return Err(OutboxError::UnknownId {
                id,
                next: self.next_id,
            });
        }
        if self.events.front().is_none_or(|oldest| oldest.id > id) {
            return Ok(());
        }
        self.append(&Record::Ack(id), false)?;
        while self.events.front().is_some_and(|oldest| oldest.id <= id) {
            self.events.pop_front();
        }
        self.compact_if_mostly_acknowledged()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Byte-count events dropped to make room, over the outbox's whole life.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Applies the records of a stored log; returns how many bytes were valid.
    fn replay(&mut self, stored: &[u8]) -> usize {
        let mut valid = 0;
        while let Some((record, used)) = Record::decode(&stored[valid..]) {
            if !self.apply(record) {
                break;
            }
            valid += used;
        }
        valid
    }

    /// Applies one replayed record; `false` if it cannot follow what came before.
    fn apply(&mut self, record: Record) -> bool {
        match record {
            Record::Push(event) => {
                // Ids only grow; a base record may already have set `next_id` above the
                // live events that follow it.
                if self.events.back().is_some_and(|last| event.id <= last.id) {
                    return false;
                }
                self.next_id = self.next_id.max(event.id + 1);
                self.events.push_back(event);
            }
            Record::Ack(id) => {
                while self.events.front().is_some_and(|oldest| oldest.id <= id) {
                    self.events.pop_front();
                }
            }
            Record::Drop(id) => {
                self.events.retain(|event| event.id != id);
                self.dropped += 1;
            }
            Record::Base { next_id, dropped } => {
                self.next_id = self.next_id.max(next_id);
                self.dropped = dropped;
            }
        }
        true
    }

    fn append(&mut self, record: &Record, durable: bool) -> Result<(), OutboxError> {
        let Some(log) = &mut self.log else {
            return Ok(());
        };
        let frame = record.encode();
        let written = log.file.write_all(&frame).and_then(|()| {
            if durable {
                log.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(source) = written {
            // Cut a partly written record off so later appends stay readable.
            let _ = log.file.set_len(log.len);
            return Err(OutboxError::Io {
                action: "appending to",
                path: log.path.clone(),
                source,
            });
        }
        log.len += frame.len() as u64;
        Ok(())
    }

    fn compact_if_mostly_acknowledged(&mut self) -> Result<(), OutboxError> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        if log.len < log.compact_at {
            return Ok(());
        }
        let live: u64 = self
            .events
            .iter()
            .map(|event| Record::push_frame_len(event) as u64)
            .sum();
        if log.len <= 2 * live {
            return Ok(());
        }
        let mut compacted = Record::Base {
            next_id: self.next_id,
            dropped: self.dropped,
        }
        .encode();
        for event in &self.events {
            compacted.extend_from_slice(&Record::Push(event.clone()).encode());
        }
        let path = log.path.clone();
        crate::trust_store::write_atomically(&path, &compacted).map_err(OutboxError::Compact)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io("reopening", &path))?;
        let log = self.log.as_mut().expect("checked above");
        log.file = file;
        log.len = compacted.len() as u64;
        Ok(())
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OutboxError {
    let path = path.to_owned();
    move |source| OutboxError::Io {
        action,
        path,
        source,
    }
}

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Record {
    Push(QueuedEvent),
    Ack(u64),
    Drop(u64),
    Base { next_id: u64, dropped: u64 },
}

const TAG_PUSH: u8 = 1;
const TAG_ACK: u8 = 2;
const TAG_DROP: u8 = 3;
const TAG_BASE: u8 = 4;
const CHECK_LEN: usize = 8;
/// Largest record body: a push of the largest message.
const MAX_BODY: usize = 1 + 8 + 1 + MAX_EVENT_BYTES;

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            Record::Push(event) => {
                body.push(TAG_PUSH);
                body.extend_from_slice(&event.id.to_le_bytes());
                body.push(match event.kind {
                    EventKind::Transition => 0,
                    EventKind::ByteCount => 1,
                });
                body.extend_from_slice(&event.bytes);
            }
            Record::Ack(id) => {
                body.push(TAG_ACK);
                body.extend_from_slice(&id.to_le_bytes());
            }
            Record::Drop(id) => {
                body.push(TAG_DROP);
                body.extend_from_slice(&id.to_le_bytes());
            }
            Record::Base { next_id, dropped } => {
                body.push(TAG_BASE);
                body.extend_from_slice(&next_id.to_le_bytes());
                body.extend_from_slice(&dropped.to_le_bytes());
            }
        }
        let length = u32::try_from(body.len())
            .expect("record bodies are bounded by MAX_BODY")
            .to_le_bytes();
        let mut frame = Vec::with_capacity(4 + body.len() + CHECK_LEN);
        frame.extend_from_slice(&length);
        frame.extend_from_slice(&body);
        let check = Sha256::digest(&frame);
        frame.extend_from_slice(&check[..CHECK_LEN]);
        frame
    }

    fn push_frame_len(event: &QueuedEvent) -> usize {
        4 + 1 + 8 + 1 + event.bytes.len() + CHECK_LEN
    }

    /// The first record of `bytes` and its length, or `None` if it is torn, corrupt or
    /// absent.
    fn decode(bytes: &[u8]) -> Option<(Record, usize)> {
        let length = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        if length == 0 || length > MAX_BODY {
            return None;
        }
        let framed = bytes.get(..4 + length)?;
        let check = bytes.get(4 + length..4 + length + CHECK_LEN)?;
        if Sha256::digest(framed)[..CHECK_LEN] != *check {
            return None;
        }
        let body = &framed[4..];
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?))
        };
        let record = match body[0] {
            TAG_PUSH => Record::Push(QueuedEvent {
                id: u64_at(1)?,
                kind: match body.get(9)? {
                    0 => EventKind::Transition,
                    1 => EventKind::ByteCount,
                    _ => return None,
                },
                bytes: body[10..].to_vec(),
            }),
            TAG_ACK if body.len() == 9 => Record::Ack(u64_at(1)?),
            TAG_DROP if body.len() == 9 => Record::Drop(u64_at(1)?),
            TAG_BASE if body.len() == 17 => Record::Base {
                next_id: u64_at(1)?,
                dropped: u64_at(9)?,
            },
            _ => return None,
        };
        Some((record, 4 + length + CHECK_LEN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: u64) -> Vec<u8> {
        format!("signed progress event {n}").into_bytes()
    }

    fn ids(outbox: &Outbox) -> Vec<u64> {
        outbox.peek(usize::MAX).iter().map(|e| e.id).collect()
    }

    #[test]
    fn records_round_trip_and_any_flipped_byte_is_refused() {
        let records = [
            Record::Push(QueuedEvent {
                id: 7,
                kind: EventKind::ByteCount,
                bytes: b"abc".to_vec(),
            }),
            Record::Ack(7),
            Record::Drop(3),
            Record::Base {
                next_id: 9,
                dropped: 2,
            },
        ];
        for record in records {
            let frame = record.encode();
            assert_eq!(Record::decode(&frame), Some((record.clone(), frame.len())));
            for at in 0..frame.len() {
                let mut damaged = frame.clone();
                damaged[at] ^= 0x01;
                assert_eq!(
                    Record::decode(&damaged)
                        .map(|(r, _)| r)
                        .filter(|r| *r == record),
                    None,
                    "a flipped byte at {at} must not decode as the original record"
                );
            }
            assert_eq!(Record::decode(&frame[..frame.len() - 1]), None, "torn");
        }
    }

    #[test]
    fn events_come_out_in_push_order_and_acks_remove_up_to_the_id() {
        let mut outbox = Outbox::in_memory(10);
        for n in 0..5 {
            outbox.push(EventKind::Transition, message(n)).unwrap();
        }
        assert_eq!(ids(&outbox), [1, 2, 3, 4, 5]);
        assert_eq!(outbox.peek(2)[1].bytes, message(1));
        outbox.ack(3).unwrap();
        assert_eq!(ids(&outbox), [4, 5]);
        outbox.ack(2).unwrap();
        assert_eq!(
            ids(&outbox),
            [4, 5],
            "acking an already acked id is a no-op"
        );
        assert!(matches!(
            outbox.ack(6),
            Err(OutboxError::UnknownId { id: 6, next: 6 })
        ));
        outbox.ack(5).unwrap();
        assert!(outbox.is_empty());
    }

    #[test]
    fn overflow_drops_the_oldest_byte_count_and_never_a_transition() {
        let mut outbox = Outbox::in_memory(4);
        let t1 = outbox.push(EventKind::Transition, message(1)).unwrap();
        let b1 = outbox.push(EventKind::ByteCount, message(2)).unwrap();
        let t2 = outbox.push(EventKind::Transition, message(3)).unwrap();
        let b2 = outbox.push(EventKind::ByteCount, message(4)).unwrap();
        let t3 = outbox.push(EventKind::Transition, message(5)).unwrap();
        assert_eq!(
            ids(&outbox),
            [t1, t2, b2, t3],
            "the oldest byte count goes first"
        );
        assert_eq!(outbox.dropped(), 1);
        let b3 = outbox.push(EventKind::ByteCount, message(6)).unwrap();
        assert_eq!(ids(&outbox), [t1, t2, t3, b3]);
        let t4 = outbox.push(EventKind::Transition, message(7)).unwrap();
        assert_eq!(ids(&outbox), [t1, t2, t3, t4]);
        assert_eq!(outbox.dropped(), 3);
        assert!(
            matches!(
                outbox.push(EventKind::Transition, message(8)),
                Err(OutboxError::Full { capacity: 4 })
            ),
            "only transitions left: refuse rather than drop one"
        );
        assert!(matches!(
            outbox.push(EventKind::ByteCount, message(9)),
            Err(OutboxError::Full { .. })
        ));
        assert_eq!(ids(&outbox), [t1, t2, t3, t4]);
        let _ = b1;
    }

    #[test]
    fn a_thousand_events_survive_a_restart_in_order_and_are_acked_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path(), 2_000).unwrap();
        let started = std::time::Instant::now();
        for n in 0..1_000u64 {
            let kind = if n % 3 == 0 {
                EventKind::Transition
            } else {
                EventKind::ByteCount
            };
            assert_eq!(outbox.push(kind, message(n)).unwrap(), n + 1);
        }
        eprintln!("1,000 pushes took {:?}", started.elapsed());
        drop(outbox);

        let mut outbox = Outbox::open(dir.path(), 2_000).unwrap();
        assert_eq!(outbox.len(), 1_000);
        let all = outbox.peek(usize::MAX);
        for (n, event) in all.iter().enumerate() {
            assert_eq!(event.id, n as u64 + 1);
            assert_eq!(event.bytes, message(n as u64), "event {n} recovered intact");
        }
        for batch in 0..10 {
            let sent = outbox.peek(100);
            assert_eq!(sent[0].id, batch * 100 + 1, "batches continue in order");
            outbox.ack(sent.last().unwrap().id).unwrap();
            drop(outbox);
            outbox = Outbox::open(dir.path(), 2_000).unwrap();
            assert_eq!(outbox.len(), 1_000 - 100 * (batch as usize + 1));
        }
        assert!(outbox.is_empty());
        assert_eq!(
            outbox.push(EventKind::Transition, message(0)).unwrap(),
            1_001,
            "ids keep increasing across restarts"
        );
    }

    #[test]
    fn a_torn_trailing_record_is_discarded_and_later_pushes_survive() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path(), 100).unwrap();
        for n in 0..10 {
            outbox.push(EventKind::Transition, message(n)).unwrap();
        }
        drop(outbox);
        // A crash in the middle of the eleventh append.
        let torn = Record::Push(QueuedEvent {
            id: 11,
            kind: EventKind::Transition,
            bytes: message(10),
        })
        .encode();
        let log = dir.path().join(LOG_FILE);
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        file.write_all(&torn[..torn.len() - 3]).unwrap();
        drop(file);

        let mut outbox = Outbox::open(dir.path(), 100).unwrap();
        assert_eq!(ids(&outbox), (1..=10).collect::<Vec<_>>());
        assert_eq!(outbox.push(EventKind::Transition, message(99)).unwrap(), 11);
        drop(outbox);
        let outbox = Outbox::open(dir.path(), 100).unwrap();
        assert_eq!(
            ids(&outbox),
            (1..=11).collect::<Vec<_>>(),
            "a push after recovery must not land behind the torn bytes"
        );
        assert_eq!(outbox.peek(11)[10].bytes, message(99));
    }

    /// Every possible crash point: the log cut at each byte opens and holds exactly the
    /// state after the last record written whole before the cut.
    #[test]
    fn a_log_cut_at_any_byte_recovers_the_state_of_the_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(LOG_FILE);
        let mut outbox = Outbox::open(dir.path(), 100).unwrap();
        let mut snapshots = vec![(0u64, Vec::<QueuedEvent>::new())];
        let mut snapshot = |outbox: &Outbox| {
            let len = std::fs::metadata(&log).unwrap().len();
            snapshots.push((len, outbox.peek(usize::MAX)));
        };
        for n in 0..8u64 {
            let kind = if n % 2 == 0 {
                EventKind::ByteCount
            } else {
                EventKind::Transition
            };
            outbox.push(kind, message(n)).unwrap();
            snapshot(&outbox);
            if n == 5 {
                outbox.ack(4).unwrap();
                snapshot(&outbox);
            }
        }
        drop(outbox);
        let full = std::fs::read(&log).unwrap();
        assert_eq!(snapshots.last().unwrap().0, full.len() as u64);
        for cut in 0..=full.len() {
            let crashed = tempfile::tempdir().unwrap();
            std::fs::write(crashed.path().join(LOG_FILE), &full[..cut]).unwrap();
            let mut outbox = Outbox::open(crashed.path(), 100).unwrap();
            let (whole, expected) = snapshots
                .iter()
                .rev()
                .find(|(len, _)| *len <= cut as u64)
                .unwrap();
            let recovered = outbox.peek(usize::MAX);
            assert_eq!(
                recovered.iter().map(|e| e.id).collect::<Vec<_>>(),
                expected.iter().map(|e| e.id).collect::<Vec<_>>(),
                "cut at byte {cut}"
            );
            assert_eq!(recovered, *expected, "cut at byte {cut}: messages intact");
            assert_eq!(
                std::fs::metadata(crashed.path().join(LOG_FILE))
                    .unwrap()
                    .len(),
                *whole,
                "cut at byte {cut}: the torn tail is truncated away"
            );
            outbox.push(EventKind::Transition, message(99)).unwrap();
        }
    }

    #[test]
    fn compaction_keeps_the_live_events_the_next_id_and_the_drop_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path(), 3).unwrap();
        outbox.log.as_mut().unwrap().compact_at = 512;
        for n in 0..200u64 {
            let kind = if n % 4 == 0 {
                EventKind::Transition
            } else {
                EventKind::ByteCount
            };
            outbox.push(kind, message(n)).unwrap();
            if n % 4 == 3 {
                let newest = outbox.peek(usize::MAX).last().unwrap().id;
                outbox.ack(newest - 1).unwrap();
            }
        }
        let log = dir.path().join(LOG_FILE);
        let size = std::fs::metadata(&log).unwrap().len();
        assert!(size < 1_024, "the log was compacted (it is {size} bytes)");
        let (queued, dropped) = (outbox.peek(usize::MAX), outbox.dropped());
        assert!(dropped > 0, "the scenario overflows the outbox");
        drop(outbox);
        let mut outbox = Outbox::open(dir.path(), 3).unwrap();
        assert_eq!(outbox.peek(usize::MAX), queued);
        assert_eq!(outbox.dropped(), dropped);
        assert_eq!(outbox.push(EventKind::Transition, message(0)).unwrap(), 201);
    }
}
