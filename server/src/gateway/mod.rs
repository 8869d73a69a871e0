//! The MQTT fast lane: shared-subscribes to vehicles' check-ins and progress events,
//! hands each to the [`Engine`] (which verifies the device signature; unknown or bad
//! messages are dropped and counted) and publishes the signed directive on
//! `ota/v1/{vid}/directive`. Control messages from the engine go out on
//! `ota/v1/{vid}/control`. Works with MQTT 3.1.1 brokers (Mosquitto, EMQX, HiveMQ all
//! support `$share/` for 3.1.1 clients).
//!
//! Shape, so that nothing can wait on itself:
//!
//! - **The event-loop task never blocks on anything but the network.** It polls rumqttc
//!   and hands each incoming publish to a worker with a non-blocking `try_acquire`; when
//!   `workers + queue` messages are already accepted it *sheds* the message (counted in
//!   `ota_vehicle_messages_shed_total`). rumqttc acknowledges QoS 1 publishes as it reads
//!   them, so a shed message is dropped deliberately, not left un-acked: an un-acked one
//!   would hold a slot of the broker's in-flight window for this client until the next
//!   reconnect (with a clean session it is never redelivered anyway), and a full window
//!   would stop delivery altogether. The vehicle checks in again at its poll interval.
//! - **Check-ins are answered in batches** ([`checkins`]): one intake task per connection
//!   waits for a free worker, then hands it everything that arrived meanwhile (≤ 128)
//!   as one batch, so the database round trips of a check-in are shared by the batch.
//! - **Handlers never wait on the broker.** Directives and control messages go into the
//!   bounded [`Outbox`] with `try_send` (full: dropped, counted in `ota_mqtt_unsent_total`).
//! - **One outbox task** moves them into rumqttc's request channel; it may wait there,
//!   but the event loop that drains that channel waits on nobody.
//! - The gateway owns the vehicle channel's health ([`ChannelHealth`]), which `/readyz`
//!   reports: `disconnected` until the broker's CONNACK and after any connection error
//!   (it reconnects with backoff), `stalled` when messages are pending and neither the
//!   event loop nor the workers made progress for `stall_seconds`.
//! - Shutdown is checked in every loop and every wait is bounded.
//!
//! **With Kafka configured** (`[kafka] brokers`, see [`crate::events`]) progress events
//! take the durable lane, on a connection of their own ([`Link::Progress`]): manual
//! acknowledgements, a persistent session when the client id is configured. Progress
//! messages are verified in batches and written to Kafka concurrently ([`durable`], no
//! worker waits on Kafka), each acknowledged to the broker only once Kafka acknowledged
//! its write (a Kafka outage holds it unacknowledged and retries; shutdown leaves it
//! unacknowledged, so a persistent session redelivers it). Unknown or badly signed
//! messages are dropped, counted and acknowledged. A shed progress event is not
//! acknowledged (the broker's in-flight window, 20 messages on Mosquitto, is far below
//! `workers + queue`, so shedding needs a misconfiguration).
//!
//! Check-ins take a second connection ([`Link::CheckIns`], `<client id>-checkin`, clean
//! session, acknowledged as read), which also carries directives and control messages.
//! On one shared connection, progress held for an unreachable Kafka would fill the
//! broker's in-flight window for that client and the broker would stop delivering
//! check-ins too. Without Kafka one connection ([`Link::All`]) carries everything.

mod checkins;
mod durable;

use crate::ack_order::AckOrder;
use crate::engine::Engine;
use crate::events::EventProducer;
use crate::settings::MqttSettings;
use ota_core::protocol::{parse_topic, Channel};
use rumqttc::{
    AsyncClient, Event, MqttOptions, NetworkOptions, Packet, Publish, QoS, SubscribeFilter,
};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;

/// rumqttc's request channel (client → event loop); the outbox in front of it is larger.
const REQUEST_CHANNEL: usize = 256;
/// How long shutdown waits for messages already being handled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A message for the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// `ota-server-<hostname>-<pid>-<random>`: unique per process, so two replicas never
/// share a client id (the broker would disconnect one for the other).
pub fn default_client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let mut random = [0u8; 4];
    // Without an entropy source the pid still separates processes on one host.
    let _ = getrandom::getrandom(&mut random);
    format!(
        "ota-server-{host}-{}-{}",
        std::process::id(),
        hex::encode(random)
    )
}

/// What `/readyz` says about the vehicle channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelStatus {
    /// No broker configured.
    Disabled,
    Ok,
    /// Not connected to the broker (not yet, or the connection dropped; it retries).
    Disconnected,
    /// Connected, messages pending, but no progress for `stall_seconds`.
    Stalled,
}

impl ChannelStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelStatus::Disabled => "disabled",
            ChannelStatus::Ok => "ok",
            ChannelStatus::Disconnected => "disconnected",
            ChannelStatus::Stalled => "stalled",
        }
    }

    /// Whether the server can take traffic with the channel in this state.
    pub fn is_ready(self) -> bool {
        matches!(self, ChannelStatus::Disabled | ChannelStatus::Ok)
    }
}

/// A snapshot of the channel's state, for [`channel_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelSnapshot {
    pub enabled: bool,
    pub connected: bool,
    /// Vehicle messages accepted and not yet handled.
    pub pending_in: usize,
    /// Outgoing messages not yet handed to the MQTT client.
    pub pending_out: usize,
    /// Since the event loop last returned an event.
    pub loop_idle: Duration,
    /// Since a worker last finished a message.
    pub workers_idle: Duration,
}

/// The pure readiness rule. An idle channel (nothing pending) is never stalled: the
/// event loop legitimately sleeps between keep-alive pings.
pub fn channel_status(s: &ChannelSnapshot, stall_after: Duration) -> ChannelStatus {
    if !s.enabled {
        return ChannelStatus::Disabled;
    }
    if !s.connected {
        return ChannelStatus::Disconnected;
    }
    let loop_stuck = (s.pending_in > 0 || s.pending_out > 0) && s.loop_idle >= stall_after;
    let workers_stuck = s.pending_in > 0 && s.workers_idle >= stall_after;
    if loop_stuck || workers_stuck {
        ChannelStatus::Stalled
    } else {
        ChannelStatus::Ok
    }
}

/// Live counters of the vehicle channel, shared by the gateway (writer) and `/readyz`
/// (reader).
#[derive(Debug)]
pub struct ChannelHealth {
    enabled: bool,
    stall_after: Duration,
    epoch: Instant,
    /// One flag per broker connection ([`Link`]); the channel is connected when every
    /// connection in use is.
    connected: [AtomicBool; LINKS],
    /// How many of `connected` are in use (set by [`run`]).
    links: AtomicUsize,
    /// Milliseconds since `epoch`.
    loop_progress_ms: AtomicU64,
    workers_progress_ms: AtomicU64,
    pending_in: AtomicUsize,
    pending_out: AtomicUsize,
    received: AtomicU64,
    shed: AtomicU64,
    handled: AtomicU64,
}

/// Totals since the process started, for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelCounts {
    pub received: u64,
    pub shed: u64,
    pub handled: u64,
}

impl ChannelHealth {
    pub fn new(enabled: bool, stall_after: Duration) -> ChannelHealth {
        ChannelHealth {
            enabled,
            stall_after,
            epoch: Instant::now(),
            connected: Default::default(),
            links: AtomicUsize::new(1),
            loop_progress_ms: AtomicU64::new(0),
            workers_progress_ms: AtomicU64::new(0),
            pending_in: AtomicUsize::new(0),
            pending_out: AtomicUsize::new(0),
            received: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            handled: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn idle(&self, since: &AtomicU64) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(since.load(Ordering::Relaxed)))
    }

    fn set_connected(&self, link: usize, connected: bool) {
        self.connected[link].store(connected, Ordering::Relaxed);
    }

    fn is_connected(&self) -> bool {
        let links = self.links.load(Ordering::Relaxed).clamp(1, LINKS);
        self.connected[..links]
            .iter()
            .all(|link| link.load(Ordering::Relaxed))
    }

    fn loop_progressed(&self) {
        self.loop_progress_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    fn workers_progressed(&self) {
        self.workers_progress_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ChannelSnapshot {
        ChannelSnapshot {
            enabled: self.enabled,
            connected: self.is_connected(),
            pending_in: self.pending_in.load(Ordering::Relaxed),
            pending_out: self.pending_out.load(Ordering::Relaxed),
            loop_idle: self.idle(&self.loop_progress_ms),
            workers_idle: self.idle(&self.workers_progress_ms),
        }
    }

    pub fn status(&self) -> ChannelStatus {
        channel_status(&self.snapshot(), self.stall_after)
    }

    pub fn counts(&self) -> ChannelCounts {
        ChannelCounts {
            received: self.received.load(Ordering::Relaxed),
            shed: self.shed.load(Ordering::Relaxed),
            handled: self.handled.load(Ordering::Relaxed),
        }
    }
}

/// The engine's way out to vehicles: a bounded queue in front of the broker connection.
/// Sending never waits; a full (or, without a broker, closed) outbox drops the message
/// and counts it in `ota_mqtt_unsent_total`.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    health: Arc<ChannelHealth>,
}

/// The gateway's end of the [`Outbox`].
#[derive(Debug)]
pub struct OutboxReceiver {
    rx: mpsc::Receiver<Outgoing>,
    health: Arc<ChannelHealth>,
}

/// A new outbox holding at most `capacity` messages.
pub fn outbox(capacity: usize, health: Arc<ChannelHealth>) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        Outbox {
            tx,
            health: health.clone(),
        },
        OutboxReceiver { rx, health },
    )
}

impl Outbox {
    /// Queues `message`, waiting for room; false (and counted) only when no broker
    /// connection will ever take it (the gateway is gone or not running).
    pub async fn send_waiting(&self, message: Outgoing) -> bool {
        if self.health.pending_out.fetch_add(1, Ordering::Relaxed) == 0 {
            self.health.loop_progressed();
        }
        match self.tx.send(message).await {
            Ok(()) => true,
            Err(_) => {
                self.health.pending_out.fetch_sub(1, Ordering::Relaxed);
                metrics::counter!("ota_mqtt_unsent_total", "reason" => "no_broker").increment(1);
                false
            }
        }
    }

    /// Queues `message`; false (and counted) when it cannot be queued.
    pub fn send(&self, message: Outgoing) -> bool {
        // Counted before sending: the outbox task may take it off at once. Idle time is
        // measured from when work became pending, not from a quiet hour before.
        if self.health.pending_out.fetch_add(1, Ordering::Relaxed) == 0 {
            self.health.loop_progressed();
        }
        match self.tx.try_send(message) {
            Ok(()) => true,
            Err(err) => {
                self.health.pending_out.fetch_sub(1, Ordering::Relaxed);
                let reason = match err {
                    mpsc::error::TrySendError::Full(_) => "outbox_full",
                    mpsc::error::TrySendError::Closed(_) => "no_broker",
                };
                metrics::counter!("ota_mqtt_unsent_total", "reason" => reason).increment(1);
                tracing::debug!(reason, "outgoing vehicle message not sent");
                false
            }
        }
    }
}

/// Most broker connections one gateway holds.
const LINKS: usize = 2;

/// One of the gateway's broker connections and what it carries. With Kafka the gateway
/// holds two, so that progress held unacknowledged while Kafka is unreachable (which
/// fills the broker's in-flight window for that client) never stops check-ins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Without Kafka: check-ins and progress, acknowledged as read; directives and
    /// control messages go out on it.
    All,
    /// With Kafka: check-ins only, acknowledged as read, on a clean session; directives
    /// and control messages go out on it.
    CheckIns,
    /// With Kafka: progress only, each acknowledged after Kafka's acknowledgement, on a
    /// persistent session when the client id is configured.
    Progress,
}

impl Link {
    /// The connections a gateway holds, with or without the durable lane.
    pub fn plan(durable: bool) -> &'static [Link] {
        if durable {
            &[Link::CheckIns, Link::Progress]
        } else {
            &[Link::All]
        }
    }

    /// The channels it subscribes to.
    pub fn channels(self) -> &'static [&'static str] {
        match self {
            Link::All => &["checkin", "progress"],
            Link::CheckIns => &["checkin"],
            Link::Progress => &["progress"],
        }
    }

    /// Channels it unsubscribes from on connecting: a persistent session made by a
    /// version that took both channels on one connection still holds the other one.
    fn unsubscribes(self) -> &'static [&'static str] {
        match self {
            Link::Progress => &["checkin"],
            Link::All | Link::CheckIns => &[],
        }
    }

    fn manual_acks(self) -> bool {
        self == Link::Progress
    }

    /// Whether directives and control messages leave on this connection.
    fn publishes(self) -> bool {
        self != Link::Progress
    }

    /// Its client id from the configured (or generated) one. The progress connection
    /// keeps it unchanged, so the broker's persistent session (and what it holds
    /// unacknowledged) carries over from a version with one connection.
    pub fn client_id(self, base: &str) -> String {
        match self {
            Link::CheckIns => format!("{base}-checkin"),
            Link::All | Link::Progress => base.to_owned(),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Link::All => "all",
            Link::CheckIns => "checkin",
            Link::Progress => "progress",
        }
    }
}

/// Whether the broker should keep this connection's session (and redeliver what it did
/// not acknowledge) across reconnects: only the progress connection of the durable lane,
/// and only with a configured client id, since a generated one is new in every process
/// and would leave orphaned sessions behind.
pub fn persistent_session(link: Link, client_id_configured: bool) -> bool {
    link == Link::Progress && client_id_configured
}

/// Whether a CONNACK shows that the broker lost a persistent session it had (not the
/// first connection, which has none yet).
fn session_lost(persistent: bool, connected_before: bool, session_present: bool) -> bool {
    persistent && connected_before && !session_present
}

/// What a worker needs to handle and acknowledge a message from one connection.
#[derive(Clone)]
struct Lane {
    engine: Engine,
    outbox: Outbox,
    client: AsyncClient,
    /// Set on the progress connection of the durable lane: acknowledgements are manual.
    manual_acks: bool,
    /// Manual acks leave in arrival order (MQTT 3.1.1 §4.6).
    acks: Arc<AckSender>,
    /// Set with `manual_acks`: where accepted progress messages go to be verified in
    /// batches ([`durable`]) instead of to a worker each.
    progress: Option<mpsc::UnboundedSender<durable::Accepted>>,
    /// Where accepted check-ins go to be answered in batches ([`checkins`]).
    checkins: mpsc::UnboundedSender<checkins::Accepted>,
    stop: CancellationToken,
}

/// The gateway's side of [`AckOrder`]: hands due acknowledgements to the client, one
/// sender at a time, so they enter the client's request channel in arrival order.
#[derive(Default)]
struct AckSender {
    order: std::sync::Mutex<AckOrder<Publish>>,
    sending: tokio::sync::Mutex<()>,
}

impl AckSender {
    fn order(&self) -> std::sync::MutexGuard<'_, AckOrder<Publish>> {
        self.order
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// From a worker: sends what is due, waiting for room in the client's channel.
    async fn flush(&self, client: &AsyncClient, stop: &CancellationToken) {
        loop {
            {
                let _sending = self.sending.lock().await;
                let due = self.order().release();
                for publish in due {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        acked = client.ack(&publish) => if let Err(err) = acked {
                            tracing::warn!(%err, "acknowledging a vehicle message failed");
                        }
                    }
                }
            }
            // An outcome recorded while this worker was sending (by the event loop,
            // which never waits for the lock) is sent on the next round.
            if !self.order().ready() {
                return;
            }
        }
    }

    /// From the event loop, which must never wait: sends what is due unless a worker is
    /// sending (that worker then sends it too).
    fn try_flush(&self, client: &AsyncClient) {
        if let Ok(_sending) = self.sending.try_lock() {
            for publish in self.order().release() {
                if let Err(err) = client.try_ack(&publish) {
                    tracing::warn!(%err, "acknowledging a vehicle message failed");
                }
            }
        }
    }
}

/// Handles one progress message off the durable lane (check-ins go to [`checkins`]).
async fn handle(lane: &Lane, topic_name: &str, payload: &[u8]) {
    let Some((vehicle_id, channel)) = parse_topic(topic_name) else {
        metrics::counter!("ota_vehicle_messages_dropped_total", "reason" => "bad_topic")
            .increment(1);
        return;
    };
    if channel != Channel::Progress {
        return;
    }
    if let Err(rejected) = lane
        .engine
        .handle_progress(vehicle_id, payload, crate::engine::wall_clock_ms())
        .await
    {
        metrics::counter!("ota_vehicle_messages_dropped_total", "reason" => rejected.label())
            .increment(1);
        tracing::debug!(%rejected, "progress event dropped");
    }
}

/// The shared subscription for one channel. One group per channel
/// (`<share_group>-checkin`, `<share_group>-progress`): replicas still split each
/// channel, and brokers that key a shared group by its name alone (rumqttd, the
/// embedded broker) do not merge the two filters into one stream.
pub fn shared_filter(share_group: &str, channel: &str) -> String {
    format!("$share/{share_group}-{channel}/ota/v1/+/{channel}")
}

/// Moves outgoing messages into the MQTT client until `stop`.
async fn run_outbox(mut outbox: OutboxReceiver, client: AsyncClient, stop: CancellationToken) {
    loop {
        let message = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            message = outbox.rx.recv() => match message {
                Some(message) => message,
                None => return,
            },
        };
        let published = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            published = client.publish(message.topic, QoS::AtLeastOnce, false, message.payload) => published,
        };
        outbox.health.pending_out.fetch_sub(1, Ordering::Relaxed);
        if let Err(err) = published {
            metrics::counter!("ota_mqtt_unsent_total", "reason" => "client_closed").increment(1);
            tracing::warn!(%err, "publishing to the broker failed");
        }
    }
}

/// Accepts one incoming publish for a worker, or sheds it. Never waits.
fn dispatch(
    lane: &Lane,
    health: &Arc<ChannelHealth>,
    accepted: &Arc<Semaphore>,
    workers: &Arc<Semaphore>,
    publish: Publish,
) {
    health.received.fetch_add(1, Ordering::Relaxed);
    // With manual acks, this message's place in the order its ack must leave in.
    let ticket = lane.manual_acks.then(|| lane.acks.order().ticket());
    // The vehicle of a progress message (only those wait for Kafka), or of a check-in.
    let (progress_of, checkin_of) = match parse_topic(&publish.topic) {
        Some((vehicle, Channel::Progress)) => (Some(vehicle.to_owned()), None),
        Some((vehicle, Channel::CheckIn)) => (None, Some(vehicle.to_owned())),
        _ => (None, None),
    };
    let Ok(slot) = accepted.clone().try_acquire_owned() else {
        health.shed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ota_vehicle_messages_shed_total").increment(1);
        if let Some(ticket) = ticket {
            // A shed check-in is acknowledged (the vehicle checks in again); shed
            // progress is not (the broker keeps it for a persistent session).
            lane.acks
                .order()
                .finish(ticket, progress_of.is_none().then_some(publish));
            // Non-blocking: the request channel is drained by this very loop.
            lane.acks.try_flush(&lane.client);
        }
        return;
    };
    if health.pending_in.fetch_add(1, Ordering::Relaxed) == 0 {
        health.workers_progressed();
    }
    if let (Some(intake), Some(ticket)) = (&lane.progress, ticket) {
        if let Some(vehicle) = progress_of {
            let accepted = durable::Accepted {
                ticket,
                vehicle,
                publish,
                slot,
            };
            if let Err(mpsc::error::SendError(accepted)) = intake.send(accepted) {
                // The intake is gone: shutdown. Never acknowledged, like any message
                // shutdown caught unhandled.
                lane.acks.order().finish(accepted.ticket, None);
                health.pending_in.fetch_sub(1, Ordering::Relaxed);
            }
            return;
        }
    }
    if let Some(vehicle) = checkin_of {
        // Only progress (handed to `durable` above) waits for Kafka before its
        // acknowledgement. A check-in is acknowledged as it is taken, like a shed one:
        // nothing keeps it, and a vehicle whose answer is lost checks in again. Holding
        // its PUBACK until it is answered would spend the broker's in-flight window for
        // this client (20 messages on Mosquitto) on messages nobody redelivers, and cap
        // check-ins at `window / answer time`.
        let accepted = checkins::Accepted {
            ticket,
            vehicle,
            publish,
            slot,
        };
        if let Err(mpsc::error::SendError(accepted)) = lane.checkins.send(accepted) {
            // The intake is gone: shutdown. Dropped unanswered.
            if let Some(ticket) = accepted.ticket {
                lane.acks.order().finish(ticket, None);
            }
            health.pending_in.fetch_sub(1, Ordering::Relaxed);
        }
        return;
    }
    let (lane, health, workers) = (lane.clone(), health.clone(), workers.clone());
    tokio::spawn(async move {
        if let Some(ticket) = ticket {
            // Not progress on the durable lane, nor a check-in: a message on a channel
            // the gateway does not handle, acknowledged as taken.
            lane.acks.order().finish(ticket, Some(publish.clone()));
            lane.acks.flush(&lane.client, &lane.stop).await;
        }
        // Waiting here is fine: this is a worker task, not the event loop. A closed
        // semaphore means shutdown: the message is dropped unhandled.
        if let Ok(_worker) = workers.acquire().await {
            handle(&lane, &publish.topic, &publish.payload).await;
            health.handled.fetch_add(1, Ordering::Relaxed);
            health.workers_progressed();
        }
        health.pending_in.fetch_sub(1, Ordering::Relaxed);
        drop(slot);
    });
}

/// Runs until `shutdown` turns true: one connection per [`Link`] of the plan, each
/// reconnecting with backoff. On shutdown each stops taking messages, lets in-flight
/// ones finish (bounded), and disconnects.
pub async fn run(
    settings: MqttSettings,
    events: Option<EventProducer>,
    engine: Engine,
    outbox: Outbox,
    outgoing: OutboxReceiver,
    health: Arc<ChannelHealth>,
    mut shutdown: watch::Receiver<bool>,
) {
    if settings.url.is_none() {
        return;
    }
    let stop = CancellationToken::new();
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = shutdown.wait_for(|stopped| *stopped).await;
            stop.cancel();
        })
    };
    let base_id = settings.client_id.clone().unwrap_or_else(default_client_id);
    let links = Link::plan(events.is_some());
    health.links.store(links.len(), Ordering::Relaxed);
    // Shared: the workers are the server's capacity for check-ins, whichever connection
    // brought them.
    let workers = Arc::new(Semaphore::new(settings.workers.max(1)));
    let mut outgoing = Some(outgoing);
    let mut connections = Vec::with_capacity(links.len());
    for (index, &link) in links.iter().enumerate() {
        let connection = Connection {
            index,
            link,
            client_id: link.client_id(&base_id),
            settings: settings.clone(),
            events: if link.manual_acks() {
                events.clone()
            } else {
                None
            },
            outgoing: if link.publishes() {
                outgoing.take()
            } else {
                None
            },
        };
        connections.push(tokio::spawn(connect(
            connection,
            engine.clone(),
            outbox.clone(),
            health.clone(),
            workers.clone(),
            stop.clone(),
        )));
    }
    for connection in connections {
        let _ = connection.await;
    }
    watcher.abort();
}

/// One broker connection's configuration.
struct Connection {
    /// Its place in [`ChannelHealth`]'s connection flags.
    index: usize,
    link: Link,
    client_id: String,
    settings: MqttSettings,
    /// Set on the progress connection of the durable lane.
    events: Option<EventProducer>,
    /// Set on the connection directives and control messages leave on.
    outgoing: Option<OutboxReceiver>,
}

/// Runs one connection until `stop`, reconnecting with backoff.
async fn connect(
    connection: Connection,
    engine: Engine,
    outbox: Outbox,
    health: Arc<ChannelHealth>,
    workers: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let Connection {
        index,
        link,
        client_id,
        settings,
        events,
        outgoing,
    } = connection;
    let Some(url) = &settings.url else {
        return;
    };
    let manual_acks = events.is_some();
    tracing::info!(
        client_id,
        link = link.label(),
        "vehicle channel connection starting"
    );
    let mut options = MqttOptions::new(client_id, url.host().to_owned(), url.port());
    options
        .set_keep_alive(Duration::from_secs(settings.keep_alive_seconds.max(5)))
        .set_clean_session(!persistent_session(link, settings.client_id.is_some()))
        .set_manual_acks(manual_acks)
        .set_max_packet_size(1024 * 1024, 1024 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CHANNEL);
    let mut network = NetworkOptions::new();
    // Directives are small and latency-bound: no Nagle delay.
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(5);
    eventloop.set_network_options(network);

    let publisher =
        outgoing.map(|outgoing| tokio::spawn(run_outbox(outgoing, client.clone(), stop.clone())));
    let (progress, intake) = if manual_acks {
        let (tx, rx) = mpsc::unbounded_channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (checkins, checkin_intake) = mpsc::unbounded_channel();
    let lane = Lane {
        engine,
        outbox,
        client: client.clone(),
        manual_acks,
        acks: Arc::new(AckSender::default()),
        progress,
        checkins,
        stop: stop.clone(),
    };
    // Like the progress intake's channel, bounded by the acceptance slots its messages
    // hold.
    let checkin_intake = tokio::spawn(checkins::run(
        lane.clone(),
        health.clone(),
        workers.clone(),
        checkin_intake,
    ));
    // The channel is unbounded but what it holds is not: every message in it holds one
    // of this connection's `workers + queue` acceptance slots.
    let progress_intake = match (events, intake) {
        (Some(events), Some(intake)) => Some(tokio::spawn(durable::run(
            lane.clone(),
            events,
            health.clone(),
            intake,
        ))),
        _ => None,
    };
    // Per connection: progress held for Kafka never takes a check-in's slot.
    let capacity = settings.workers.max(1) + settings.queue;
    let accepted = Arc::new(Semaphore::new(capacity));
    let subscriptions: Vec<SubscribeFilter> = link
        .channels()
        .iter()
        .map(|channel| {
            SubscribeFilter::new(
                shared_filter(&settings.share_group, channel),
                QoS::AtLeastOnce,
            )
        })
        .collect();
    let unsubscriptions: Vec<String> = link
        .unsubscribes()
        .iter()
        .map(|channel| shared_filter(&settings.share_group, channel))
        .collect();
    let persistent = persistent_session(link, settings.client_id.is_some());
    let mut connected_before = false;
    let mut backoff = BACKOFF_START;
    while !stop.is_cancelled() {
        let event = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            event = eventloop.poll() => event,
        };
        health.loop_progressed();
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = BACKOFF_START;
                if session_lost(persistent, connected_before, ack.session_present) {
                    // What the broker held for this session (progress not yet
                    // acknowledged, and what arrived while the gateway was away) is gone.
                    metrics::counter!("ota_mqtt_sessions_lost_total", "link" => link.label())
                        .increment(1);
                    tracing::warn!(
                        link = link.label(),
                        "the MQTT broker no longer holds this connection's persistent \
                         session (it lost its state): vehicle messages it held for the \
                         gateway are lost; keep the broker's sessions persistent"
                    );
                }
                connected_before = true;
                // Acks of the previous connection's messages can no longer be sent.
                lane.acks.order().reconnected();
                health.set_connected(index, true);
                tracing::info!(link = link.label(), "connected to the MQTT broker");
                // Subscribing goes through the request channel, which only this loop
                // drains: never await it here.
                let (client, filters, stale, stop) = (
                    client.clone(),
                    subscriptions.clone(),
                    unsubscriptions.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        result = async {
                            client.subscribe_many(filters).await?;
                            for filter in stale {
                                client.unsubscribe(filter).await?;
                            }
                            Ok::<(), rumqttc::ClientError>(())
                        } => if let Err(err) = result {
                            tracing::warn!(%err, "subscribing failed");
                        }
                    }
                });
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                dispatch(&lane, &health, &accepted, &workers, publish)
            }
            Ok(_) => {}
            Err(err) => {
                health.set_connected(index, false);
                tracing::warn!(%err, link = link.label(), retry_in = ?backoff, "MQTT connection error");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    // Shutdown: messages still waiting for a worker are dropped; those being handled
    // finish (bounded): holding every acceptance slot means none is in flight.
    workers.close();
    let capacity = u32::try_from(capacity).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_TIMEOUT, accepted.acquire_many(capacity))
        .await
        .is_err()
    {
        tracing::warn!(
            link = link.label(),
            "vehicle messages still in flight after {DRAIN_TIMEOUT:?}"
        );
    }
    stop.cancel();
    if let Some(publisher) = publisher {
        let _ = publisher.await;
    }
    if let Some(progress_intake) = progress_intake {
        let _ = progress_intake.await;
    }
    let _ = checkin_intake.await;
    let _ = client.try_disconnect();
    // Let the disconnect go out; the event loop must be polled for that.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    health.set_connected(index, false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_progress_connection_with_a_configured_client_id_keeps_its_session() {
        assert!(persistent_session(Link::Progress, true));
        assert!(!persistent_session(Link::Progress, false));
        for link in [Link::All, Link::CheckIns] {
            assert!(!persistent_session(link, true));
            assert!(!persistent_session(link, false));
        }
    }

    #[test]
    fn a_persistent_session_missing_on_a_reconnect_is_lost() {
        assert!(session_lost(true, true, false));
        assert!(
            !session_lost(true, false, false),
            "the first connection has none"
        );
        assert!(!session_lost(true, true, true));
        assert!(
            !session_lost(false, true, false),
            "a clean session is never kept"
        );
    }

    #[test]
    fn with_kafka_check_ins_and_progress_take_separate_connections() {
        for durable in [false, true] {
            let links = Link::plan(durable);
            assert!(links.len() <= LINKS);
            let mut channels: Vec<&str> = links
                .iter()
                .flat_map(|link| link.channels())
                .copied()
                .collect();
            channels.sort_unstable();
            assert_eq!(
                channels,
                ["checkin", "progress"],
                "each channel exactly once"
            );
            assert_eq!(
                links.iter().filter(|link| link.publishes()).count(),
                1,
                "directives leave on one connection"
            );
        }
        let durable = Link::plan(true);
        let progress = durable
            .iter()
            .find(|l| l.channels() == ["progress"])
            .unwrap();
        assert!(progress.manual_acks() && !progress.publishes());
        assert!(durable
            .iter()
            .filter(|l| **l != *progress)
            .all(|l| !l.manual_acks() && !l.channels().contains(&"progress")));
        // The progress connection keeps the configured id (its persistent session
        // carries over); the other differs, so the broker never confuses the two.
        let ids: Vec<String> = durable.iter().map(|l| l.client_id("srv-1")).collect();
        assert_eq!(progress.client_id("srv-1"), "srv-1");
        assert_ne!(ids[0], ids[1]);
        assert_eq!(Link::All.client_id("srv-1"), "srv-1");
    }

    #[test]
    fn client_ids_are_unique_per_call_and_name_the_process() {
        let (a, b) = (default_client_id(), default_client_id());
        assert_ne!(a, b);
        assert!(a.starts_with("ota-server-"), "{a}");
        assert!(a.contains(&format!("-{}-", std::process::id())), "{a}");
    }

    fn snapshot() -> ChannelSnapshot {
        ChannelSnapshot {
            enabled: true,
            connected: true,
            pending_in: 0,
            pending_out: 0,
            loop_idle: Duration::ZERO,
            workers_idle: Duration::ZERO,
        }
    }

    #[test]
    fn readiness_rule() {
        let stall = Duration::from_secs(15);
        let long = Duration::from_secs(60);
        let status = |s: ChannelSnapshot| channel_status(&s, stall);
        assert_eq!(status(snapshot()), ChannelStatus::Ok);
        assert_eq!(
            status(ChannelSnapshot {
                enabled: false,
                connected: false,
                ..snapshot()
            }),
            ChannelStatus::Disabled
        );
        assert_eq!(
            status(ChannelSnapshot {
                connected: false,
                ..snapshot()
            }),
            ChannelStatus::Disconnected
        );
        // Idle for a long time with nothing pending: fine (keep-alive gaps).
        assert_eq!(
            status(ChannelSnapshot {
                loop_idle: long,
                workers_idle: long,
                ..snapshot()
            }),
            ChannelStatus::Ok
        );
        // Outgoing messages pending and the event loop not moving: stalled.
        assert_eq!(
            status(ChannelSnapshot {
                pending_out: 3,
                loop_idle: long,
                ..snapshot()
            }),
            ChannelStatus::Stalled
        );
        // Incoming messages pending and no worker finishing: stalled.
        assert_eq!(
            status(ChannelSnapshot {
                pending_in: 3,
                workers_idle: long,
                ..snapshot()
            }),
            ChannelStatus::Stalled
        );
        // Pending but recent progress: ok.
        assert_eq!(
            status(ChannelSnapshot {
                pending_in: 3,
                pending_out: 3,
                ..snapshot()
            }),
            ChannelStatus::Ok
        );
        assert!(ChannelStatus::Ok.is_ready() && ChannelStatus::Disabled.is_ready());
        assert!(!ChannelStatus::Stalled.is_ready() && !ChannelStatus::Disconnected.is_ready());
    }

    #[tokio::test]
    async fn a_full_or_closed_outbox_drops_without_waiting() {
        let health = Arc::new(ChannelHealth::new(true, Duration::from_secs(15)));
        let (tx, mut rx) = outbox(1, health.clone());
        let message = || Outgoing {
            topic: "t".into(),
            payload: vec![1],
        };
        assert!(tx.send(message()));
        assert!(!tx.send(message()), "a full outbox refuses at once");
        assert_eq!(health.snapshot().pending_out, 1);
        assert_eq!(rx.rx.recv().await, Some(message()));
        drop(rx);
        assert!(!tx.send(message()), "a closed outbox refuses at once");
    }
}
