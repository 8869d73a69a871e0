//! The durable lane measured from outside (docs/fleet-bench.md, "The durable lane"):
//! progress events ingested end to end (MQTT → gateway → Kafka → consumer → database),
//! the breaker's reaction (the threshold-crossing failure event → the `cancel` control
//! messages), and a pause's reach (`POST .../pause` → the `poll_now` control messages,
//! and no new assignment afterwards).
//!
//! Simulated vehicles speak the protocol (PROTOCOL.md §10): signed check-ins and progress
//! events out, directives and control messages in, each verified against the director
//! keys of the served root. Everything the server did is read from outside: the messages
//! vehicles receive, `/metrics`, and the rollout status API.

use super::{checkin_bytes, mqtt_options, percentile, vehicle_id, vehicle_key, Api, BrokerAddress};
use anyhow::{bail, Context, Result};
use ota_core::envelope::Envelope;
use ota_core::key::SigningKey;
use ota_core::metadata::{Role, Root};
use ota_core::protocol::{
    sign_message, topic, Channel, ControlCommand, ControlMessage, ProgressEvent, ProgressPhase,
    PAYLOAD_TYPE_CONTROL, PAYLOAD_TYPE_PROGRESS,
};
use ota_core::threshold::verify_threshold;
use ota_core::time::Timestamp;
use ota_tests::metrics::counter;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Hardware id of the breaker trials' vehicles: no other rollout selects them.
pub const BREAKER_HARDWARE_ID: &str = "hw-fleet-bench-breaker";
/// Vehicles registered per pause trial that never checked in: their check-ins, sent once
/// the pause was answered, must get no assignment.
const PROBES_PER_TRIAL: usize = 4;
/// The transitions an agent reports for a deployment it commits, in order
/// (`agent/src/machine.rs`; byte-count updates while downloading are not transitions).
const COMMIT_PHASES: [ProgressPhase; 8] = [
    ProgressPhase::Downloading,
    ProgressPhase::Downloaded,
    ProgressPhase::Verified,
    ProgressPhase::Installing,
    ProgressPhase::Installed,
    ProgressPhase::Rebooting,
    ProgressPhase::HealthCheck,
    ProgressPhase::Committed,
];
/// Nothing the server should do takes longer than this without any visible progress.
const STALL: Duration = Duration::from_secs(30);

/// What the durable phases of one configuration measured.
#[derive(Debug, Default)]
pub struct Durable {
    pub progress: Option<ProgressResult>,
    pub pause: Option<TrialsResult>,
    pub breaker: Option<TrialsResult>,
}

#[derive(Debug, Clone)]
pub struct ProgressResult {
    pub vehicles: usize,
    pub events: u64,
    /// Events per second from the first publish until the gateway had written the last
    /// one to Kafka (`ota_vehicle_events_produced_total`).
    pub into_kafka_per_second: f64,
    /// Events per second from the first publish until the consumer had applied the last
    /// one to the database (`ota_vehicle_events_consumed_total`).
    pub applied_per_second: f64,
    pub seconds: f64,
    /// Consumer outcomes: applied (changed the deployment), unchanged (a duplicate or
    /// reordered event).
    pub applied: u64,
    pub unchanged: u64,
    /// Deployments the rollout status reports committed afterwards.
    pub committed: u64,
}

/// Latencies of repeated trials: per vehicle (each message), and per trial (the last
/// vehicle reached).
#[derive(Debug, Clone, Default)]
pub struct TrialsResult {
    pub trials: usize,
    /// Messages expected / received over all trials.
    pub expected: u64,
    pub received: u64,
    /// Per-message latencies, µs, sorted.
    pub per_vehicle_us: Vec<u64>,
    /// Per-trial latency until the last affected vehicle had its message, µs, sorted
    /// (complete trials only).
    pub per_trial_last_us: Vec<u64>,
    /// Pause only: request sent → API answer, µs, sorted.
    pub answered_us: Vec<u64>,
    /// Server-side drops of control messages over the trials (`ota_mqtt_unsent_total`).
    pub unsent: u64,
}

impl TrialsResult {
    pub fn complete(&self) -> bool {
        self.received == self.expected
    }
}

pub fn ms(sorted_us: &[u64], p: f64) -> String {
    if sorted_us.is_empty() {
        return "-".to_owned();
    }
    format!("{:.1}", percentile(sorted_us, p) as f64 / 1000.0)
}

/// What the simulated vehicles received, per vehicle index.
#[derive(Debug, Default, Clone)]
struct Seen {
    directives: u64,
    /// Deployment id of the last directive's assignment (`None`: it assigned nothing).
    assignment: Option<String>,
    /// Control messages since the last [`Inbox::clear_controls`].
    controls: Vec<(Instant, ControlCommand, Option<String>)>,
}

struct Inbox {
    run_id: String,
    root: Root,
    seen: Mutex<Vec<Seen>>,
    bad: AtomicU64,
    changed: Notify,
}

impl Inbox {
    /// The vehicle index of `ota/v1/<run>-<index>/<channel>`, with the channel.
    fn route<'t>(&self, topic: &'t str) -> Option<(usize, &'t str)> {
        let rest = topic.strip_prefix("ota/v1/")?;
        let (vehicle, channel) = rest.split_once('/')?;
        let index = vehicle
            .strip_prefix(self.run_id.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()?;
        Some((index, channel))
    }

    /// A director-signed envelope of `payload_type`, verified against the root.
    fn verified(&self, payload_type: &str, bytes: &[u8]) -> Option<Envelope> {
        let envelope = Envelope::parse(bytes).ok()?;
        if envelope.payload_type != payload_type {
            return None;
        }
        verify_threshold(
            &envelope,
            Role::Director,
            &self.root.keys,
            self.root.role_keys(Role::Director),
            "director",
        )
        .ok()?;
        Some(envelope)
    }

    fn receive(&self, topic: &str, payload: &[u8], at: Instant) {
        let Some((index, channel)) = self.route(topic) else {
            return;
        };
        let expected = vehicle_id(&self.run_id, index);
        let mut seen = self.seen.lock().expect("inbox");
        let Some(slot) = seen.get_mut(index) else {
            return;
        };
        let good = match channel {
            "directive" => super::directive(Some(&self.root), payload)
                .filter(|d| d.vehicle_id == expected)
                .map(|d| {
                    slot.directives += 1;
                    slot.assignment = d.assignments.first().map(|a| a.deployment_id.clone());
                })
                .is_some(),
            "control" => self
                .verified(PAYLOAD_TYPE_CONTROL, payload)
                .and_then(|e| serde_json::from_slice::<ControlMessage>(&e.payload).ok())
                .filter(|c| c.vehicle_id == expected)
                .map(|c| slot.controls.push((at, c.command, c.deployment_id)))
                .is_some(),
            _ => true,
        };
        drop(seen);
        if !good {
            self.bad.fetch_add(1, Ordering::Relaxed);
        }
        self.changed.notify_waiters();
    }

    /// Waits until `done` holds over what vehicles received; fails after `STALL` with no
    /// message at all, or `limit` in total. A bad directive or control message fails at
    /// once.
    async fn wait(
        &self,
        what: &str,
        limit: Duration,
        stall: Duration,
        mut done: impl FnMut(&[Seen]) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let bad = self.bad.load(Ordering::Relaxed);
            if bad > 0 {
                bail!("{bad} directive(s) or control message(s) failed verification or named another vehicle");
            }
            if done(&self.seen.lock().expect("inbox")) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("{what}: not done within {} s", limit.as_secs());
            }
            if tokio::time::timeout(stall.min(deadline - now), notified)
                .await
                .is_err()
                && Instant::now() < deadline
            {
                bail!("{what}: nothing received for {} s", stall.as_secs());
            }
            // Re-checked at most every 5 ms: `done` may scan the whole fleet, and a
            // fan-out of 50,000 messages must not make the receivers wait on it. The
            // latencies are the receivers' timestamps, not this loop's.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn clear_controls(&self) {
        for slot in self.seen.lock().expect("inbox").iter_mut() {
            slot.controls.clear();
        }
    }
}

/// The simulated vehicles' MQTT connections: each vehicle publishes on connection
/// `index % n` (so one vehicle's messages stay in order); directives and control
/// messages come back through one shared subscription per channel.
struct Link {
    clients: Vec<AsyncClient>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    inbox: Arc<Inbox>,
    keys: Vec<SigningKey>,
    nonce: AtomicU64,
}

impl Drop for Link {
    fn drop(&mut self) {
        for client in &self.clients {
            let _ = client.try_disconnect();
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Link {
    async fn open(
        connections: usize,
        broker: &BrokerAddress<'_>,
        inbox: Arc<Inbox>,
        keys: Vec<SigningKey>,
    ) -> Result<Link> {
        let run = inbox.run_id.clone();
        // Two subscriptions (two SubAcks) per connection: room for all of them.
        let (subscribed_tx, mut subscribed) = tokio::sync::mpsc::channel(connections * 2);
        let mut clients = Vec::new();
        let mut tasks = Vec::new();
        for c in 0..connections {
            let (client, mut eventloop) = mqtt_options(broker, &format!("durable-{c}"));
            let (client2, inbox, subscribed_tx, run) = (
                client.clone(),
                inbox.clone(),
                subscribed_tx.clone(),
                run.clone(),
            );
            tasks.push(tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            for channel in ["directive", "control"] {
                                let _ = client2.try_subscribe(
                                    format!("$share/{run}d/ota/v1/+/{channel}"),
                                    QoS::AtLeastOnce,
                                );
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = subscribed_tx.try_send(());
                        }
                        Ok(Event::Incoming(Packet::Publish(publish))) => {
                            inbox.receive(&publish.topic, &publish.payload, Instant::now());
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }));
            clients.push(client);
        }
        for _ in 0..connections * 2 {
            tokio::time::timeout(Duration::from_secs(15), subscribed.recv())
                .await
                .context("the broker did not acknowledge the subscriptions within 15 s")?;
        }
        Ok(Link {
            clients,
            tasks,
            inbox,
            keys,
            nonce: AtomicU64::new(1 << 40),
        })
    }

    async fn publish(&self, index: usize, channel: Channel, payload: Vec<u8>) -> Result<()> {
        let vid = vehicle_id(&self.inbox.run_id, index);
        self.clients[index % self.clients.len()]
            .publish(topic(&vid, channel), QoS::AtLeastOnce, false, payload)
            .await
            .context("publishing to the broker")
    }

    /// One check-in from each of `indices` (`window` at a time), each answered by a
    /// directive; returns each vehicle's assigned deployment (if any).
    async fn check_in(&self, indices: &[usize], window: usize) -> Result<Vec<Option<String>>> {
        for chunk in indices.chunks(window.max(1)) {
            let before: Vec<u64> = {
                let seen = self.inbox.seen.lock().expect("inbox");
                chunk.iter().map(|&i| seen[i].directives).collect()
            };
            for &i in chunk {
                let n = self.nonce.fetch_add(1, Ordering::Relaxed);
                let bytes = checkin_bytes(&self.keys[i], &vehicle_id(&self.inbox.run_id, i), n);
                self.publish(i, Channel::CheckIn, bytes).await?;
            }
            self.inbox
                .wait("check-ins answered", STALL, STALL, |seen| {
                    chunk
                        .iter()
                        .zip(&before)
                        .all(|(&i, &b)| seen[i].directives > b)
                })
                .await?;
        }
        let seen = self.inbox.seen.lock().expect("inbox");
        Ok(indices
            .iter()
            .map(|&i| seen[i].assignment.clone())
            .collect())
    }

    fn progress(
        &self,
        index: usize,
        deployment: &str,
        sequence: u64,
        phase: ProgressPhase,
        length: u64,
    ) -> Vec<u8> {
        let failed = phase == ProgressPhase::Failed;
        let event = ProgressEvent {
            vehicle_id: vehicle_id(&self.inbox.run_id, index),
            deployment_id: deployment.to_owned(),
            sequence,
            phase,
            bytes_done: if failed || phase == ProgressPhase::Downloading {
                0
            } else {
                length
            },
            bytes_total: length,
            reason_code: failed.then(|| "install_failed:fleet-bench".to_owned()),
            at: Timestamp::from_datetime(chrono::Utc::now()),
        };
        sign_message(PAYLOAD_TYPE_PROGRESS, &event, &self.keys[index])
    }
}

/// The consumer's and the gateway's counters, read from `/metrics`.
#[derive(Debug, Clone, Default)]
struct Lane {
    consumed: u64,
    applied: u64,
    unchanged: u64,
    produced: u64,
    /// Vehicle messages of registered vehicles the gateway refused (bad signature,
    /// unknown deployment, ...).
    dropped: u64,
    shed: u64,
    unsent: u64,
    /// The refusals by reason, as `/metrics` shows them (for error messages).
    dropped_by_reason: String,
}

async fn lane(api: &Api) -> Result<Lane> {
    let text = api
        .http
        .get(format!("{}/metrics", api.url))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(Lane {
        consumed: counter(&text, "ota_vehicle_events_consumed_total"),
        applied: counter(
            &text,
            "ota_vehicle_events_consumed_total{outcome=\"applied\"}",
        ),
        unchanged: counter(
            &text,
            "ota_vehicle_events_consumed_total{outcome=\"unchanged\"}",
        ),
        produced: counter(&text, "ota_vehicle_events_produced_total"),
        // Not `unknown_vehicle`: the benchmark's vehicles are all registered, and on a
        // shared broker this server also receives other fleets' messages.
        dropped: counter(&text, "ota_vehicle_messages_dropped_total").saturating_sub(counter(
            &text,
            "ota_vehicle_messages_dropped_total{reason=\"unknown_vehicle\"}",
        )),
        shed: counter(&text, "ota_vehicle_messages_shed_total"),
        unsent: counter(&text, "ota_mqtt_unsent_total"),
        dropped_by_reason: text
            .lines()
            .filter(|l| l.starts_with("ota_vehicle_messages_dropped_total"))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// Polls `/metrics` every 20 ms until the consumer has taken `target` events; fails when
/// it stops moving for `STALL`.
async fn wait_consumed(api: &Api, target: u64, what: &str) -> Result<()> {
    let mut last = lane(api).await?;
    let mut moved = Instant::now();
    loop {
        let now = lane(api).await?;
        if now.consumed >= target {
            return Ok(());
        }
        if now.consumed != last.consumed || now.produced != last.produced {
            moved = Instant::now();
        }
        if moved.elapsed() > STALL {
            bail!(
                "{what}: the consumer took {} of {target} events and nothing moved for {} s \
                 (gateway: {} written to Kafka, {} refused, {} shed)",
                now.consumed,
                STALL.as_secs(),
                now.produced,
                now.dropped,
                now.shed
            );
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the durable phases need from the configuration.
pub struct Setup<'a> {
    pub api: &'a Api,
    pub broker: &'a BrokerAddress<'a>,
    pub run_id: &'a str,
    pub connections: usize,
    pub window: usize,
    /// The fleet (indices `0..vehicles`) and the rollout over all of it.
    pub vehicles: usize,
    pub rollout: &'a str,
    /// Length of the fleet rollout's image (progress events report it).
    pub image_length: u64,
    pub progress: bool,
    /// How many of the fleet's vehicles report progress (the first ones).
    pub progress_vehicles: usize,
    pub pause_trials: usize,
    pub breaker_trials: usize,
    pub breaker_slice: usize,
    pub breaker_failures: usize,
    pub breaker_action: BreakerAction,
    /// Progress events published and not yet taken by the gateway, at most.
    pub progress_window: usize,
}

/// Runs the requested durable phases over one configuration's server.
pub async fn run(setup: &Setup<'_>) -> Result<Durable> {
    let api = setup.api;
    let probes = setup.pause_trials * PROBES_PER_TRIAL;
    let probe_base = setup.vehicles;
    let slice_base = probe_base + probes;
    let slice = if setup.breaker_trials > 0 {
        setup.breaker_slice
    } else {
        0
    };
    let total = slice_base + slice;
    let keys: Vec<SigningKey> = (0..total).map(|i| vehicle_key(setup.run_id, i)).collect();
    register(
        api,
        setup.run_id,
        &keys,
        probe_base..slice_base,
        super::HARDWARE_ID,
    )
    .await?;
    register(
        api,
        setup.run_id,
        &keys,
        slice_base..total,
        BREAKER_HARDWARE_ID,
    )
    .await?;
    let inbox = Arc::new(Inbox {
        run_id: setup.run_id.to_owned(),
        root: api.director_keys().await?,
        seen: Mutex::new(vec![Seen::default(); total]),
        bad: AtomicU64::new(0),
        changed: Notify::new(),
    });
    let link = Link::open(setup.connections, setup.broker, inbox.clone(), keys).await?;
    let mut result = Durable::default();

    if setup.progress || setup.pause_trials > 0 {
        // Every vehicle of the fleet holds its deployment of the rollout.
        let started = Instant::now();
        let fleet: Vec<usize> = (0..setup.vehicles).collect();
        let assigned = link.check_in(&fleet, setup.window).await?;
        let missing = assigned.iter().filter(|a| a.is_none()).count();
        if missing > 0 {
            bail!(
                "{missing} of {} vehicles got no assignment from the fleet rollout",
                setup.vehicles
            );
        }
        eprintln!(
            "  every vehicle holds its deployment ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
        let deployments: Vec<String> = assigned.into_iter().flatten().collect();
        if setup.pause_trials > 0 {
            let pause = pause(setup, &link, &deployments, probe_base).await?;
            result.pause = Some(pause);
        }
        if setup.progress {
            let reporting = setup.progress_vehicles.min(deployments.len());
            result.progress = Some(progress(setup, &link, &deployments[..reporting]).await?);
        }
    }
    if setup.breaker_trials > 0 {
        result.breaker = Some(breaker(setup, &link, slice_base).await?);
    }
    Ok(result)
}

async fn register(
    api: &Api,
    run_id: &str,
    keys: &[SigningKey],
    range: std::ops::Range<usize>,
    hardware_id: &str,
) -> Result<()> {
    if range.is_empty() {
        return Ok(());
    }
    let batch: Vec<Value> = range
        .map(|i| {
            json!({ "id": vehicle_id(run_id, i), "public_key": keys[i].public_key().to_hex(),
                    "ecus": [{ "ecu": "main", "hardware_id": hardware_id }], "tags": [] })
        })
        .collect();
    api.post("/api/v1/vehicles:bulk", json!({ "vehicles": batch }))
        .await
        .context("registering the durable phases' vehicles")?;
    Ok(())
}

/// Every vehicle reports the eight transitions of a committed deployment, at maximum
/// rate, phase by phase over the fleet (so one vehicle's events are a fleet apart, as on
/// a real fleet where they are seconds apart). At most `--progress-window` events are
/// published and not yet taken by the gateway (the broker's queue for the server is
/// bounded: Mosquitto drops beyond `max_queued_messages`, 1,000 by default).
async fn progress(
    setup: &Setup<'_>,
    link: &Link,
    deployments: &[String],
) -> Result<ProgressResult> {
    let api = setup.api;
    // Signed before the clock starts: a real fleet signs on its own CPUs.
    let signing = Instant::now();
    let mut messages: Vec<(usize, Vec<u8>)> =
        Vec::with_capacity(deployments.len() * COMMIT_PHASES.len());
    for (s, phase) in COMMIT_PHASES.iter().enumerate() {
        for (i, deployment) in deployments.iter().enumerate() {
            messages.push((
                i,
                link.progress(i, deployment, s as u64 + 1, *phase, setup.image_length),
            ));
        }
    }
    let events = messages.len() as u64;
    eprintln!(
        "  progress: {events} events signed in {:.1} s",
        signing.elapsed().as_secs_f64()
    );
    let base = lane(api).await?;
    let taken_by_gateway = |now: &Lane| {
        (now.produced + now.dropped + now.shed)
            .saturating_sub(base.produced + base.dropped + base.shed)
    };
    let window = setup.progress_window.max(1) as u64;
    let started = Instant::now();
    let mut taken = 0u64;
    let mut into_kafka_at = None;
    for (published, (index, bytes)) in (0u64..).zip(messages) {
        let mut moved = Instant::now();
        while published >= taken + window {
            let now = taken_by_gateway(&lane(api).await?);
            if now != taken {
                moved = Instant::now();
            }
            taken = now;
            if published < taken + window {
                break;
            }
            if moved.elapsed() > STALL {
                bail!(
                    "progress: the gateway took {taken} of {published} published events and nothing moved for {} s",
                    STALL.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        link.publish(index, Channel::Progress, bytes).await?;
    }
    // Until the consumer has taken every event; note when the gateway had written all.
    let target = base.consumed + events;
    let mut moved = Instant::now();
    let mut last = lane(api).await?;
    let (end, ended) = loop {
        let now = lane(api).await?;
        if into_kafka_at.is_none() && now.produced >= base.produced + events {
            into_kafka_at = Some(Instant::now());
        }
        if now.consumed >= target {
            break (now, Instant::now());
        }
        if now.dropped > base.dropped || now.shed > base.shed {
            bail!(
                "progress: the gateway refused {} and shed {} vehicle messages since the first \
                 event was published: they will never be applied (refusals before: [{}], now: [{}])",
                now.dropped - base.dropped,
                now.shed - base.shed,
                base.dropped_by_reason,
                now.dropped_by_reason
            );
        }
        if now.consumed != last.consumed || now.produced != last.produced {
            moved = Instant::now();
        }
        if moved.elapsed() > STALL {
            bail!(
                "progress: {} of {events} events applied, {} written to Kafka; nothing moved for {} s",
                now.consumed - base.consumed,
                now.produced - base.produced,
                STALL.as_secs()
            );
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let into_kafka_at = into_kafka_at.unwrap_or(ended);
    let skipped = (end.consumed - base.consumed)
        - (end.applied - base.applied)
        - (end.unchanged - base.unchanged);
    if skipped > 0 {
        bail!("progress: the consumer skipped {skipped} events (refused on re-verification)");
    }
    let status = api
        .get(&format!("/api/v1/rollouts/{}/status", setup.rollout))
        .await?;
    let committed = status["totals"]["committed"].as_u64().unwrap_or(0);
    if committed != deployments.len() as u64 {
        bail!(
            "progress: every event was consumed but the rollout reports {committed} of {} deployments committed: {status}",
            deployments.len()
        );
    }
    let seconds = ended.duration_since(started).as_secs_f64();
    Ok(ProgressResult {
        vehicles: deployments.len(),
        events,
        into_kafka_per_second: events as f64
            / into_kafka_at
                .duration_since(started)
                .as_secs_f64()
                .max(1e-9),
        applied_per_second: events as f64 / seconds.max(1e-9),
        seconds,
        applied: end.applied - base.applied,
        unchanged: end.unchanged - base.unchanged,
        committed,
    })
}

/// `POST .../pause` on the fleet rollout, every vehicle holding an unfinished deployment:
/// the latency until each gets its `poll_now` control message (the pause's only message
/// to vehicles: in-flight deployments are not stopped, PROTOCOL.md/director.rs), and a
/// check that check-ins sent once the pause was answered get no new assignment. Resumed
/// after each trial.
async fn pause(
    setup: &Setup<'_>,
    link: &Link,
    deployments: &[String],
    probe_base: usize,
) -> Result<TrialsResult> {
    let api = setup.api;
    let mut result = TrialsResult {
        trials: setup.pause_trials,
        ..TrialsResult::default()
    };
    for trial in 0..setup.pause_trials {
        link.inbox.clear_controls();
        let before = lane(api).await?;
        let started = Instant::now();
        api.post(
            &format!("/api/v1/rollouts/{}/pause", setup.rollout),
            json!({}),
        )
        .await?;
        result
            .answered_us
            .push(started.elapsed().as_micros() as u64);
        // Vehicles that never checked in: nothing new is handed out any more.
        let probes: Vec<usize> = (probe_base + trial * PROBES_PER_TRIAL
            ..probe_base + (trial + 1) * PROBES_PER_TRIAL)
            .collect();
        let answers = link.check_in(&probes, PROBES_PER_TRIAL).await?;
        if let Some(assigned) = answers.iter().flatten().next() {
            bail!("pause: a check-in sent after the pause was answered was assigned {assigned}");
        }
        let polled = |seen: &[Seen]| -> usize {
            deployments
                .iter()
                .enumerate()
                .filter(|(i, d)| {
                    seen[*i].controls.iter().any(|(_, c, id)| {
                        *c == ControlCommand::PollNow && id.as_deref() == Some(d.as_str())
                    })
                })
                .count()
        };
        let waited = link
            .inbox
            .wait(
                "pause: poll_now to every vehicle",
                Duration::from_secs(120),
                Duration::from_secs(10),
                |seen| polled(seen) == deployments.len(),
            )
            .await;
        let after = lane(api).await?;
        result.unsent += after.unsent - before.unsent;
        let latencies: Vec<u64> = {
            let seen = link.inbox.seen.lock().expect("inbox");
            (0..deployments.len())
                .filter_map(|i| {
                    seen[i]
                        .controls
                        .iter()
                        .find(|(_, c, _)| *c == ControlCommand::PollNow)
                        .map(|(at, _, _)| at.duration_since(started).as_micros() as u64)
                })
                .collect()
        };
        result.expected += deployments.len() as u64;
        result.received += latencies.len() as u64;
        if let Err(err) = waited {
            eprintln!(
                "  pause trial {trial}: {} of {} vehicles got poll_now ({err:#}; server dropped {} control messages)",
                latencies.len(),
                deployments.len(),
                after.unsent - before.unsent
            );
        } else if let Some(last) = latencies.iter().max() {
            result.per_trial_last_us.push(*last);
        }
        result.per_vehicle_us.extend(latencies);
        api.post(
            &format!("/api/v1/rollouts/{}/resume", setup.rollout),
            json!({}),
        )
        .await?;
    }
    result.per_vehicle_us.sort_unstable();
    result.per_trial_last_us.sort_unstable();
    result.answered_us.sort_unstable();
    Ok(result)
}

/// A breaker trial's rollout policy (`abort_criteria.action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BreakerAction {
    Pause,
    Abort,
    Rollback,
}

impl BreakerAction {
    fn action(self) -> &'static str {
        match self {
            BreakerAction::Pause => "pause",
            BreakerAction::Abort => "abort",
            BreakerAction::Rollback => "rollback",
        }
    }

    /// The rollout's state once its breaker opened.
    fn halted_state(self) -> &'static str {
        match self {
            BreakerAction::Pause => "paused",
            BreakerAction::Abort => "aborted",
            BreakerAction::Rollback => "rolled_back",
        }
    }
}

/// Breaker trials, each a new rollout (policy `--breaker-action`) over the slice: every vehicle is
/// assigned, `failures - 1` report `failed`, the others `downloading`; once the consumer
/// applied those, the last failing vehicle's `failed` crosses the threshold. Measured:
/// its publish → each `downloading` vehicle's `cancel`.
async fn breaker(setup: &Setup<'_>, link: &Link, slice_base: usize) -> Result<TrialsResult> {
    let api = setup.api;
    let (slice, failures) = (setup.breaker_slice, setup.breaker_failures);
    if failures == 0 || failures >= slice {
        bail!("--breaker-failures must be at least 1 and below --breaker-slice");
    }
    let image = api
        .send(
            api.http
                .post(format!(
                    "{}/api/v1/images?hardware_id={BREAKER_HARDWARE_ID}&version=2.0.0",
                    api.url
                ))
                .header("content-type", "application/octet-stream")
                .body(b"fleet-bench breaker firmware 2.0.0 ".repeat(64)),
            "image upload",
        )
        .await?;
    let release = api
        .post(
            "/api/v1/releases",
            json!({ "name": "fleet-bench-breaker-2.0.0", "version": "2.0.0",
                    "security_version": 2, "images": [image["id"]] }),
        )
        .await?;
    let length = image["length"].as_u64().unwrap_or(0);
    let vehicles: Vec<usize> = (slice_base..slice_base + slice).collect();
    let ids: Vec<String> = vehicles
        .iter()
        .map(|&i| vehicle_id(setup.run_id, i))
        .collect();
    let mut result = TrialsResult {
        trials: setup.breaker_trials,
        ..TrialsResult::default()
    };
    for trial in 0..setup.breaker_trials {
        let rollout = api
            .post(
                "/api/v1/rollouts",
                json!({ "name": format!("fleet-bench-breaker-{trial}"), "release_id": release["id"],
                        "selector": { "vehicle_ids": ids },
                        "phases": [{ "name": "canary", "percent": 100 }],
                        "rate_limit": { "maximum_per_minute": 4_000_000_000u32 },
                        "abort_criteria": { "failure_type": "all", "threshold_percentage": 50,
                                            "min_number_of_executed_things": failures,
                                            "action": setup.breaker_action.action(),
                                            "in_progress_timeout_seconds": null } }),
            )
            .await?;
        let rollout = rollout["id"]
            .as_str()
            .context("rollout without an id")?
            .to_owned();
        api.post(&format!("/api/v1/rollouts/{rollout}/start"), json!({}))
            .await?;
        let assigned = link.check_in(&vehicles, setup.window).await?;
        let deployments: Vec<String> = assigned
            .into_iter()
            .enumerate()
            .map(|(n, d)| {
                d.with_context(|| {
                    format!("breaker trial {trial}: vehicle {n} of the slice got no assignment")
                })
            })
            .collect::<Result<_>>()?;
        link.inbox.clear_controls();
        // Everyone starts downloading; all but the last failing vehicle fail.
        let base = lane(api).await?;
        let mut sent = 0u64;
        for (n, (&i, d)) in vehicles.iter().zip(&deployments).enumerate() {
            link.publish(
                i,
                Channel::Progress,
                link.progress(i, d, 1, ProgressPhase::Downloading, length),
            )
            .await?;
            sent += 1;
            if n + 1 < failures {
                link.publish(
                    i,
                    Channel::Progress,
                    link.progress(i, d, 2, ProgressPhase::Failed, length),
                )
                .await?;
                sent += 1;
            }
        }
        wait_consumed(
            api,
            base.consumed + sent,
            "breaker: the canary's first events",
        )
        .await?;
        let crossing = link.progress(
            vehicles[failures - 1],
            &deployments[failures - 1],
            2,
            ProgressPhase::Failed,
            length,
        );
        let started = Instant::now();
        link.publish(vehicles[failures - 1], Channel::Progress, crossing)
            .await?;
        let cancelled = |seen: &[Seen]| -> usize {
            vehicles[failures..]
                .iter()
                .zip(&deployments[failures..])
                .filter(|(i, d)| {
                    seen[**i].controls.iter().any(|(_, c, id)| {
                        *c == ControlCommand::Cancel && id.as_deref() == Some(d.as_str())
                    })
                })
                .count()
        };
        let expected = slice - failures;
        link.inbox
            .wait(
                "breaker: cancel to every downloading vehicle",
                Duration::from_secs(60),
                STALL,
                |seen| cancelled(seen) == expected,
            )
            .await
            .with_context(|| format!("breaker trial {trial}"))?;
        let latencies: Vec<u64> = {
            let seen = link.inbox.seen.lock().expect("inbox");
            vehicles[failures..]
                .iter()
                .filter_map(|&i| {
                    seen[i]
                        .controls
                        .iter()
                        .find(|(_, c, _)| *c == ControlCommand::Cancel)
                        .map(|(at, _, _)| at.duration_since(started).as_micros() as u64)
                })
                .collect()
        };
        let state = api.get(&format!("/api/v1/rollouts/{rollout}")).await?;
        if state["state"] != setup.breaker_action.halted_state() || state["breaker_state"] != "open"
        {
            bail!("breaker trial {trial}: cancels received but the rollout is {state}");
        }
        if setup.breaker_action == BreakerAction::Pause {
            // A paused rollout still holds its vehicles: the next trial needs them.
            api.post(&format!("/api/v1/rollouts/{rollout}/abort"), json!({}))
                .await?;
        }
        result.expected += expected as u64;
        result.received += latencies.len() as u64;
        if let Some(last) = latencies.iter().max() {
            result.per_trial_last_us.push(*last);
        }
        result.per_vehicle_us.extend(latencies);
    }
    result.per_vehicle_us.sort_unstable();
    result.per_trial_last_us.sort_unstable();
    Ok(result)
}
