//! The vehicle's MQTT link (rumqttc, MQTT 3.1.1): a persistent session (clean session
//! off, a stable client id) so directives and control messages sent while the vehicle was
//! offline arrive when it reconnects; subscriptions to its own `directive` and `control`
//! topics only; reconnects with exponential backoff and jitter.
//!
//! Publishes are tracked to their acknowledgement: each publish carries a caller id, and
//! [`LinkEvent::Delivered`] reports it once the broker acknowledged it (QoS 1: PUBACK;
//! QoS 0: handed to the network). The progress outbox deletes an event only then.
//!
//! rumqttc reports a publish by packet id only, so the ids are matched to publishes in
//! the order rumqttc takes them ([`Tracker`]). When a connection fails, rumqttc keeps
//! what it had not sent (and what the broker had not acknowledged) for the next session.
//! When the broker answers that it holds no session for this client (a broker that lost
//! its state), rumqttc drops its pending list, the link drops what else is left of the
//! old session ([`forget_old_session`]), and the tracker forgets those publishes, so no
//! later acknowledgement is credited to a publish that never reached the broker; the
//! driver sends every unacknowledged outbox event again on [`LinkEvent::Connected`].

use ota_core::endpoint::{BrokerUrl, BrokerUrlError};
use ota_core::protocol::{parse_topic, topic, Channel};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// What the link reports to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    Connected,
    Disconnected {
        reason: String,
    },
    Directive(Vec<u8>),
    Control(Vec<u8>),
    /// The publish with this caller id reached the broker.
    Delivered(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("MQTT URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("MQTT link closed")]
    Closed,
}

/// `mqtt://host:port` (or `tcp://`), default port 1883 ([`BrokerUrl`], shared with the
/// server's configuration).
pub fn parse_broker_url(url: &str) -> Result<(String, u16), MqttError> {
    let parsed: BrokerUrl = url.parse().map_err(|e: BrokerUrlError| MqttError::Url {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    Ok((parsed.host().to_owned(), parsed.port()))
}

/// Publishes handed to rumqttc whose packet id is not known yet, and QoS 1 publishes
/// waiting for their PUBACK.
#[derive(Debug, Default)]
struct Tracker {
    /// In the order rumqttc takes them: each `Outgoing::Publish` with a new packet id is
    /// the oldest one here.
    queued: VecDeque<(u64, QoS)>,
    inflight: HashMap<u16, u64>,
    /// After a connection error: how many of the oldest `queued` publishes rumqttc holds
    /// for the next session only (its pending list, or reported by events it has not
    /// handed out yet). Acted on at the next CONNACK.
    held_for_session: usize,
}

impl Tracker {
    /// Queues a publish handed to rumqttc.
    fn queue(&mut self, id: u64, qos: QoS) {
        self.queued.push_back((id, qos));
    }

    /// rumqttc sent a publish with packet id `pkid` (0 for QoS 0). Returns the caller id
    /// it delivered, for QoS 0.
    fn sent(&mut self, pkid: u16) -> Option<u64> {
        if pkid != 0 && self.inflight.contains_key(&pkid) {
            // A QoS 1 publish retransmitted after a reconnect.
            return None;
        }
        match self.queued.pop_front()? {
            (id, QoS::AtMostOnce) => Some(id),
            (id, _) => {
                self.inflight.insert(pkid, id);
                None
            }
        }
    }

    /// The broker acknowledged packet id `pkid`: the caller id it delivered.
    fn acknowledged(&mut self, pkid: u16) -> Option<u64> {
        self.inflight.remove(&pkid)
    }

    /// A connection failed; rumqttc holds the oldest `held` queued publishes for the next
    /// session (the rest are still in its request channel and go out whatever happens).
    fn connection_lost(&mut self, held: usize) {
        self.held_for_session = held.min(self.queued.len());
    }

    /// A CONNACK. When the broker resumed the session rumqttc sends what it held; when it
    /// did not, rumqttc dropped that and the old session's unacknowledged publishes: they
    /// are forgotten, and their count returned.
    fn session_started(&mut self, resumed: bool) -> usize {
        let held = std::mem::take(&mut self.held_for_session);
        if resumed {
            return 0;
        }
        let unacknowledged = self.inflight.len();
        self.inflight.clear();
        self.queued.drain(..held.min(self.queued.len())).count() + unacknowledged
    }
}

/// How many of the tracker's queued publishes rumqttc holds for the next session after a
/// connection error: those whose `Outgoing::Publish` it has not handed out yet and that
/// [`Tracker::sent`] would take as new (its events are replayed against the packet ids
/// the tracker knows in flight, `inflight`, so a retransmission whose write failed is not
/// counted), the one parked on a packet-id collision, and the new ones (packet id 0) in
/// its pending list. Its pending list also holds retransmissions, which already have a
/// packet id and are not queued.
fn held_for_next_session(eventloop: &rumqttc::EventLoop, inflight: &HashMap<u16, u64>) -> usize {
    let mut known: HashSet<u16> = inflight.keys().copied().collect();
    let mut unreported = 0;
    for event in &eventloop.state.events {
        match event {
            Event::Incoming(Packet::PubAck(ack)) => {
                known.remove(&ack.pkid);
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                unreported += usize::from(*pkid == 0 || known.insert(*pkid));
            }
            _ => {}
        }
    }
    let pending = eventloop
        .pending
        .iter()
        .filter(|request| matches!(request, rumqttc::Request::Publish(p) if p.pkid == 0))
        .count();
    unreported + usize::from(eventloop.state.collision.is_some()) + pending
}

/// At a CONNACK without a session: drops what rumqttc still had from the old one (the
/// events reporting publishes it will never send, a publish parked on a collision whose
/// acknowledgement cannot come), matching [`Tracker::session_started`].
fn forget_old_session(eventloop: &mut rumqttc::EventLoop) {
    eventloop.state.events.retain(|event| {
        !matches!(
            event,
            Event::Outgoing(Outgoing::Publish(_) | Outgoing::AwaitAck(_))
        )
    });
    eventloop.state.collision = None;
}

/// The connected link.
#[derive(Debug, Clone)]
pub struct MqttLink {
    client: AsyncClient,
    vehicle_id: String,
    tracker: Arc<Mutex<Tracker>>,
}

/// Backoff after the `failures`-th consecutive connection failure: 0.5 s doubling to 30 s,
/// with up to 50% jitter so a fleet does not reconnect in lockstep after a broker restart.
pub fn reconnect_backoff(failures: u32, jitter: f64) -> Duration {
    let base = 0.5 * 2f64.powi(failures.min(6) as i32);
    Duration::from_secs_f64(base.min(30.0) * (1.0 + 0.5 * jitter.clamp(0.0, 1.0)))
}

/// A random number in [0, 1] (jitter; a failing RNG just means no jitter).
pub(crate) fn random_unit() -> f64 {
    let mut bytes = [0u8; 4];
    let _ = getrandom::getrandom(&mut bytes);
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX)
}

impl MqttLink {
    /// Starts the link's event loop; returns the link and the stream of its events.
    pub fn start(
        url: &str,
        vehicle_id: &str,
    ) -> Result<(MqttLink, mpsc::UnboundedReceiver<LinkEvent>), MqttError> {
        let (host, port) = parse_broker_url(url)?;
        let mut options = MqttOptions::new(format!("ota-agent-{vehicle_id}"), host, port);
        options.set_clean_session(false);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(10);
        eventloop.set_network_options(network);
        let (tx, rx) = mpsc::unbounded_channel();
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let link = MqttLink {
            client: client.clone(),
            vehicle_id: vehicle_id.to_owned(),
            tracker: tracker.clone(),
        };
        let subscriber = link.clone();
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        failures = 0;
                        if !ack.session_present {
                            forget_old_session(&mut eventloop);
                        }
                        let forgotten = tracker
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .session_started(ack.session_present);
                        if forgotten > 0 {
                            eprintln!(
                                "ota-agent {}: the broker holds no session for this vehicle \
                                 (it lost its state): {forgotten} publishes it had not \
                                 acknowledged are forgotten; the outbox sends its events again",
                                subscriber.vehicle_id
                            );
                        }
                        // The broker keeps subscriptions of a persistent session, but a
                        // first connection (or a broker that lost its state) has none.
                        for channel in [Channel::Directive, Channel::Control] {
                            let _ = subscriber.client.try_subscribe(
                                topic(&subscriber.vehicle_id, channel),
                                QoS::AtLeastOnce,
                            );
                        }
                        if tx.send(LinkEvent::Connected).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let event = match parse_topic(&publish.topic) {
                            Some((vid, Channel::Directive)) if vid == subscriber.vehicle_id => {
                                LinkEvent::Directive(publish.payload.to_vec())
                            }
                            Some((vid, Channel::Control)) if vid == subscriber.vehicle_id => {
                                LinkEvent::Control(publish.payload.to_vec())
                            }
                            _ => continue,
                        };
                        if tx.send(event).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        let delivered =
                            tracker.lock().unwrap_or_else(|e| e.into_inner()).sent(pkid);
                        if let Some(id) = delivered {
                            let _ = tx.send(LinkEvent::Delivered(id));
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        let id = tracker
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .acknowledged(ack.pkid);
                        if let Some(id) = id {
                            let _ = tx.send(LinkEvent::Delivered(id));
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        // rumqttc has moved what it did not send to its pending list
                        // (and drained its request channel into it).
                        {
                            let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
                            let held = held_for_next_session(&eventloop, &t.inflight);
                            t.connection_lost(held);
                        }
                        if tx
                            .send(LinkEvent::Disconnected {
                                reason: err.to_string(),
                            })
                            .is_err()
                        {
                            return;
                        }
                        failures = failures.saturating_add(1);
                        tokio::time::sleep(reconnect_backoff(failures, random_unit())).await;
                    }
                }
            }
        });
        Ok((link, rx))
    }

    /// Publishes on one of this vehicle's topics; `id` comes back as
    /// [`LinkEvent::Delivered`] once the broker has it.
    pub async fn publish(
        &self,
        channel: Channel,
        qos: QoS,
        id: u64,
        payload: Vec<u8>,
    ) -> Result<(), MqttError> {
        // Queued before the request so the event loop always finds it.
        self.tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queue(id, qos);
        self.client
            .publish(topic(&self.vehicle_id, channel), qos, false, payload)
            .await
            .map_err(|_| MqttError::Closed)
    }

    /// Ends the session politely.
    pub async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_a_default_port_and_refuse_other_schemes() {
        assert_eq!(
            parse_broker_url("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".to_owned(), 1884)
        );
        assert_eq!(
            parse_broker_url("tcp://broker").unwrap(),
            ("broker".to_owned(), 1883)
        );
        assert!(parse_broker_url("http://x:1").is_err());
        assert!(parse_broker_url("mqtt://:1").is_err());
        assert!(parse_broker_url("mqtt://h:99999").is_err());
    }

    #[test]
    fn publishes_are_matched_to_packet_ids_in_order_and_retransmissions_are_not_new() {
        let mut t = Tracker::default();
        t.queue(1, QoS::AtLeastOnce);
        t.queue(2, QoS::AtMostOnce);
        t.queue(3, QoS::AtLeastOnce);
        assert_eq!(t.sent(7), None);
        assert_eq!(t.sent(0), Some(2), "QoS 0 is delivered when sent");
        assert_eq!(t.sent(8), None);
        // The connection fails with nothing held back; the broker resumes the session and
        // rumqttc retransmits packet 7 before sending a new publish.
        t.connection_lost(0);
        assert_eq!(t.session_started(true), 0);
        assert_eq!(t.sent(7), None);
        t.queue(4, QoS::AtLeastOnce);
        assert_eq!(t.sent(9), None);
        assert_eq!(t.acknowledged(8), Some(3));
        assert_eq!(t.acknowledged(7), Some(1));
        assert_eq!(t.acknowledged(9), Some(4));
        assert_eq!(t.acknowledged(9), None);
    }

    #[test]
    fn a_broker_without_the_session_never_gets_a_later_ack_credited_to_a_dropped_publish() {
        let mut t = Tracker::default();
        t.queue(1, QoS::AtLeastOnce);
        assert_eq!(t.sent(5), None);
        t.queue(2, QoS::AtLeastOnce);
        t.queue(3, QoS::AtLeastOnce);
        // The connection fails: rumqttc holds 2 and 3 (and the unacknowledged 1) for the
        // next session; 4 is published after that and waits in its request channel.
        t.connection_lost(2);
        t.queue(4, QoS::AtLeastOnce);
        // Reconnecting finds no session: rumqttc drops 1, 2 and 3.
        assert_eq!(t.session_started(false), 3);
        assert_eq!(t.sent(6), None);
        assert_eq!(t.acknowledged(6), Some(4), "packet 6 carried 4, not 2");
        assert_eq!(
            t.acknowledged(5),
            None,
            "the old session's packet 5 is forgotten"
        );
        // With the session resumed, what was held goes out first.
        t.queue(5, QoS::AtLeastOnce);
        t.connection_lost(1);
        t.queue(6, QoS::AtLeastOnce);
        assert_eq!(t.session_started(true), 0);
        assert_eq!(t.sent(7), None);
        assert_eq!(t.sent(8), None);
        assert_eq!(t.acknowledged(7), Some(5));
        assert_eq!(t.acknowledged(8), Some(6));
    }

    #[tokio::test]
    async fn what_rumqttc_holds_for_the_next_session_is_counted_from_its_own_state() {
        let (client, mut eventloop) =
            AsyncClient::new(MqttOptions::new("ota-agent-test", "127.0.0.1", 1), 16);
        let mut t = Tracker::default();
        for n in 0..3u8 {
            t.queue(u64::from(n), QoS::AtLeastOnce);
            client
                .try_publish("ota/v1/v/progress", QoS::AtLeastOnce, false, vec![n])
                .unwrap();
        }
        t.queue(3, QoS::AtMostOnce);
        client
            .try_publish("ota/v1/v/progress", QoS::AtMostOnce, false, vec![9])
            .unwrap();
        // A connection error drains the request channel into the pending list.
        eventloop.clean();
        assert_eq!(held_for_next_session(&eventloop, &t.inflight), 4);
        // rumqttc takes the first one (a packet id and an event it has not reported), and
        // the connection fails again: the publish is now a retransmission in the pending
        // list, its event still unreported.
        let first = eventloop.pending.pop_front().unwrap();
        eventloop.state.handle_outgoing_packet(first).unwrap();
        eventloop.clean();
        assert_eq!(eventloop.pending.len(), 4);
        assert_eq!(held_for_next_session(&eventloop, &t.inflight), 4);
        // Once the event is reported, the retransmission is no longer counted.
        let Some(Event::Outgoing(Outgoing::Publish(pkid))) = eventloop.state.events.pop_front()
        else {
            panic!("the first publish's event");
        };
        assert_eq!(t.sent(pkid), None);
        assert_eq!(held_for_next_session(&eventloop, &t.inflight), 3);
        // The session resumes, rumqttc retransmits it and the write fails: the event it
        // leaves unreported is a retransmission, not a new publish.
        let retransmission = eventloop.pending.pop_back().unwrap();
        eventloop
            .state
            .handle_outgoing_packet(retransmission)
            .unwrap();
        eventloop.clean();
        assert_eq!(held_for_next_session(&eventloop, &t.inflight), 3);
        t.connection_lost(held_for_next_session(&eventloop, &t.inflight));
        t.queue(4, QoS::AtLeastOnce);
        // Without a session all three are dropped, and the publish made since is the
        // next one sent.
        forget_old_session(&mut eventloop);
        assert!(eventloop.state.events.is_empty());
        assert_eq!(t.session_started(false), 4);
        assert_eq!(t.sent(1), None);
        assert_eq!(t.acknowledged(1), Some(4));
    }

    #[test]
    fn reconnect_backoff_grows_and_is_capped() {
        assert!(reconnect_backoff(1, 0.0) < reconnect_backoff(3, 0.0));
        assert!(reconnect_backoff(50, 1.0) <= Duration::from_secs(45));
        assert_eq!(reconnect_backoff(50, 0.0), Duration::from_secs(30));
    }
}
