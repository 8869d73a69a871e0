//! The in-process Kafka for `ota-server serve` with no `[kafka] brokers`: a laptop, the
//! demo, a test bench. It is librdkafka's mock cluster (`rdkafka::mocking`), which
//! speaks the Kafka protocol on a loopback port, so the durable lane runs exactly as in
//! production (gateway → topic → consumer group → database), with the same producer and
//! consumer code.
//!
//! **Not for production**: it keeps everything in memory (a restart loses the topics
//! and the committed offsets), has one broker, and is meant for testing clients. Set
//! `kafka.brokers` to a real cluster, or `kafka.embedded = "off"` to apply progress
//! directly without a lane.
//!
//! The mock cluster is not `Send`: it lives on a thread of its own, which owns it until
//! the [`EmbeddedKafka`] handle is dropped.

use std::sync::mpsc;

/// How `kafka.embedded` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddedKafkaMode {
    /// With no `brokers`, run the in-process cluster (the default).
    Auto,
    /// Never: with no `brokers`, progress is applied directly.
    Off,
}

impl EmbeddedKafkaMode {
    pub fn parse(text: &str) -> Option<EmbeddedKafkaMode> {
        match text {
            "auto" => Some(EmbeddedKafkaMode::Auto),
            "off" => Some(EmbeddedKafkaMode::Off),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedKafkaError {
    #[error("the in-process Kafka did not start: {0}")]
    Start(String),
}

/// A running in-process cluster; dropping the handle stops it.
#[derive(Debug)]
pub struct EmbeddedKafka {
    bootstrap: String,
    /// Dropping this ends the owning thread, which drops the cluster.
    _stop: mpsc::Sender<()>,
}

impl EmbeddedKafka {
    /// `host:port` of the cluster, what `kafka.brokers` is set to.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }
}

/// Starts a one-broker cluster holding `topics` (name, partitions).
pub fn start(topics: &[(String, i32)]) -> Result<EmbeddedKafka, EmbeddedKafkaError> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let topics = topics.to_vec();
    std::thread::Builder::new()
        .name("embedded-kafka".to_owned())
        .spawn(move || {
            let cluster = match rdkafka::mocking::MockCluster::new(1) {
                Ok(cluster) => cluster,
                Err(err) => {
                    let _ = ready_tx.send(Err(err.to_string()));
                    return;
                }
            };
            for (name, partitions) in &topics {
                if let Err(err) = cluster.create_topic(name, (*partitions).max(1), 1) {
                    let _ = ready_tx.send(Err(format!("creating topic {name}: {err}")));
                    return;
                }
            }
            let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
            // Until the handle is dropped (the sender closes).
            let _ = stop_rx.recv();
            drop(cluster);
        })
        .map_err(|e| EmbeddedKafkaError::Start(e.to_string()))?;
    let bootstrap = ready_rx
        .recv()
        .map_err(|_| EmbeddedKafkaError::Start("its thread ended".to_owned()))?
        .map_err(EmbeddedKafkaError::Start)?;
    Ok(EmbeddedKafka {
        bootstrap,
        _stop: stop_tx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_strictly() {
        assert_eq!(
            EmbeddedKafkaMode::parse("auto"),
            Some(EmbeddedKafkaMode::Auto)
        );
        assert_eq!(
            EmbeddedKafkaMode::parse("off"),
            Some(EmbeddedKafkaMode::Off)
        );
        for bad in ["", "on", "Auto", "127.0.0.1:9092"] {
            assert_eq!(EmbeddedKafkaMode::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_started_cluster_answers_on_loopback_and_stops_when_dropped() {
        let kafka = start(&[("t".to_owned(), 2)]).expect("the mock cluster starts");
        let address = kafka.bootstrap_servers().to_owned();
        assert!(
            std::net::TcpStream::connect(&address).is_ok(),
            "{address} accepts connections"
        );
        drop(kafka);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(&address).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "{address} still listening 10 s after the handle was dropped"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The durable lane's own producer (idempotent, acks=all) and group consumer work
    /// against the in-process cluster: what the gateway writes, the engine reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lanes_producer_and_group_consumer_work_on_it() {
        use rdkafka::consumer::Consumer;
        use rdkafka::Message;
        let settings = crate::settings::KafkaSettings::default();
        let kafka = start(&[(settings.topic.clone(), settings.partitions)]).unwrap();
        let settings = crate::settings::KafkaSettings {
            brokers: Some(kafka.bootstrap_servers().to_owned()),
            ..settings
        };
        let breakers = crate::api::dependencies::DependencyBreakers::new(&Default::default());
        let producer = crate::events::EventProducer::new(&settings, breakers.kafka).unwrap();
        let event = crate::events::VehicleEvent {
            schema: crate::events::PROGRESS_SCHEMA.to_owned(),
            schema_version: crate::events::PROGRESS_SCHEMA_VERSION,
            vehicle_id: "v1".to_owned(),
            deployment_id: "d1".to_owned(),
            sequence: 1,
            phase: "downloading".to_owned(),
            received_at_ms: 1,
            message: String::new(),
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), producer.send(&event))
            .await
            .expect("acknowledged within 30 s")
            .expect("written");
        let consumer = crate::events::engine_consumer(&settings).unwrap();
        consumer.subscribe(&[&settings.topic]).unwrap();
        let message = tokio::time::timeout(std::time::Duration::from_secs(30), consumer.recv())
            .await
            .expect("read within 30 s")
            .expect("a record");
        let (read, _) = crate::events::decode_event(message.payload().unwrap()).unwrap();
        assert_eq!(read, event);
    }
}
