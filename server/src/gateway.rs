//! The MQTT fast lane: shared-subscribes to vehicles' check-ins and progress events,
//! hands each to the [`Engine`] (which verifies the device signature; unknown or bad
//! messages are dropped and counted) and publishes the signed directive on
//! `ota/v1/{vid}/directive`. Control messages from the engine go out on
//! `ota/v1/{vid}/control`. Works with MQTT 3.1.1 brokers (Mosquitto, EMQX, HiveMQ all
//! support `$share/` for 3.1.1 clients).

use crate::engine::{Engine, Outgoing};
use crate::settings::MqttSettings;
use ota_core::protocol::{parse_topic, topic, Channel};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};

/// Most vehicle messages handled at once; more wait in the broker's queue.
const MAX_IN_FLIGHT: u32 = 64;

/// `mqtt://host:port` (or `tcp://`) → (host, port); port defaults to 1883.
pub fn parse_broker_url(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok()?),
        None => (rest, 1883),
    };
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some((host.to_owned(), port))
}

async fn handle(engine: Engine, client: AsyncClient, topic_name: String, payload: Vec<u8>) {
    let Some((vehicle_id, channel)) = parse_topic(&topic_name) else {
        metrics::counter!("ota_vehicle_messages_dropped_total", "reason" => "bad_topic")
            .increment(1);
        return;
    };
    match channel {
        Channel::CheckIn => match engine.handle_checkin(vehicle_id, &payload).await {
            Ok(directive) => {
                metrics::counter!("ota_checkins_total", "outcome" => "accepted").increment(1);
                if let Err(err) = client
                    .publish(
                        topic(vehicle_id, Channel::Directive),
                        QoS::AtLeastOnce,
                        false,
                        directive,
                    )
                    .await
                {
                    tracing::warn!(%err, "publishing a directive failed");
                }
            }
            Err(rejected) => {
                metrics::counter!("ota_vehicle_messages_dropped_total", "reason" => rejected.label()).increment(1);
                tracing::debug!(%rejected, "check-in dropped");
            }
        },
        Channel::Progress => {
            if let Err(rejected) = engine.handle_progress(vehicle_id, &payload).await {
                metrics::counter!("ota_vehicle_messages_dropped_total", "reason" => rejected.label()).increment(1);
                tracing::debug!(%rejected, "progress event dropped");
            }
        }
        Channel::Directive | Channel::Control => {}
    }
}

/// Runs until `shutdown` turns true, reconnecting with backoff. On shutdown it stops
/// taking messages, lets in-flight ones finish, and disconnects cleanly.
pub async fn run(settings: MqttSettings, engine: Engine, mut shutdown: watch::Receiver<bool>) {
    let Some((host, port)) = settings.url.as_deref().and_then(parse_broker_url) else {
        return;
    };
    let mut options = MqttOptions::new(settings.client_id.clone(), host, port);
    options
        .set_keep_alive(Duration::from_secs(settings.keep_alive_seconds.max(5)))
        .set_clean_session(true)
        .set_max_packet_size(1024 * 1024, 1024 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    engine.set_outbox(tx);
    let publisher = {
        let client = client.clone();
        tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                if let Err(err) = client
                    .publish(out.topic, QoS::AtLeastOnce, false, out.payload)
                    .await
                {
                    tracing::warn!(%err, "publishing a control message failed");
                }
            }
        })
    };
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT as usize));
    let subscriptions = [
        format!("$share/{}/ota/v1/+/checkin", settings.share_group),
        format!("$share/{}/ota/v1/+/progress", settings.share_group),
    ];
    let mut backoff = Duration::from_millis(200);
    loop {
        let event = tokio::select! {
            _ = shutdown.changed() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(200);
                engine.set_broker_connected(true);
                tracing::info!("connected to the MQTT broker");
                for filter in &subscriptions {
                    if let Err(err) = client.subscribe(filter.clone(), QoS::AtLeastOnce).await {
                        tracing::warn!(%err, filter, "subscribing failed");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let engine = engine.clone();
                let client = client.clone();
                let topic_name = publish.topic.clone();
                let payload = publish.payload.to_vec();
                tokio::spawn(async move {
                    handle(engine, client, topic_name, payload).await;
                    drop(permit);
                });
            }
            Ok(_) => {}
            Err(err) => {
                engine.set_broker_connected(false);
                tracing::warn!(%err, retry_in = ?backoff, "MQTT connection error");
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    // Wait for in-flight messages: taking every permit means none is being handled.
    let _all = permits.acquire_many(MAX_IN_FLIGHT).await;
    let _ = client.disconnect().await;
    // Let the disconnect go out; the event loop must be polled for that.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    publisher.abort();
    engine.set_broker_connected(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker_url("mqtt://127.0.0.1:1883"),
            Some(("127.0.0.1".into(), 1883))
        );
        assert_eq!(
            parse_broker_url("mqtt://broker"),
            Some(("broker".into(), 1883))
        );
        assert_eq!(parse_broker_url("http://broker:1883"), None);
        assert_eq!(parse_broker_url("mqtt://:1883"), None);
        assert_eq!(parse_broker_url("mqtt://b:notaport"), None);
    }
}
