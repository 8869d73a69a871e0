//! The vehicle's MQTT link (rumqttc, MQTT 3.1.1): a persistent session (clean session
//! off, a stable client id) so directives and control messages sent while the vehicle was
//! offline arrive when it reconnects; subscriptions to its own `directive` and `control`
//! topics only; reconnects with exponential backoff and jitter.
//!
//! Publishes are tracked to their acknowledgement: each publish carries a caller id, and
//! [`LinkEvent::Delivered`] reports it once the broker acknowledged it (QoS 1: PUBACK;
//! QoS 0: handed to the network). The progress outbox deletes an event only then.

use ota_core::endpoint::{BrokerUrl, BrokerUrlError};
use ota_core::protocol::{parse_topic, topic, Channel};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use std::collections::{HashMap, VecDeque};
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
    queued: VecDeque<(u64, QoS)>,
    inflight: HashMap<u16, u64>,
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
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        failures = 0;
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
                        let delivered = {
                            let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
                            if pkid != 0 && t.inflight.contains_key(&pkid) {
                                // A QoS 1 publish retransmitted after a reconnect.
                                None
                            } else {
                                match t.queued.pop_front() {
                                    Some((id, QoS::AtMostOnce)) => Some(id),
                                    Some((id, _)) => {
                                        t.inflight.insert(pkid, id);
                                        None
                                    }
                                    None => None,
                                }
                            }
                        };
                        if let Some(id) = delivered {
                            let _ = tx.send(LinkEvent::Delivered(id));
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        let id = tracker
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .inflight
                            .remove(&ack.pkid);
                        if let Some(id) = id {
                            let _ = tx.send(LinkEvent::Delivered(id));
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
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
            .queued
            .push_back((id, qos));
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
    fn reconnect_backoff_grows_and_is_capped() {
        assert!(reconnect_backoff(1, 0.0) < reconnect_backoff(3, 0.0));
        assert!(reconnect_backoff(50, 1.0) <= Duration::from_secs(45));
        assert_eq!(reconnect_backoff(50, 0.0), Duration::from_secs(30));
    }
}
