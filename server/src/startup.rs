//! Building and running the server: `Application::build` connects storage, loads keys
//! and binds the listener (port 0 in tests, reported by [`Application::port`]);
//! [`Application::run_until_stopped`] serves until the shutdown future resolves, then
//! finishes in-flight requests, MQTT messages and delta jobs before returning.

use crate::api::{self, AppState};
use crate::blobs::BlobStore;
use crate::engine::Engine;
use crate::events::EventProducer;
use crate::gateway::{self, ChannelHealth, Outbox, OutboxReceiver};
use crate::jobs::{BuilderEngine, DeltaEngine};
use crate::settings::Settings;
use crate::signing::ServerKeys;
use crate::store::Store;
use anyhow::Context;
use ota_core::time::Timestamp;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    state: AppState,
    jobs: Arc<Notify>,
    delta_engine: Arc<dyn DeltaEngine>,
    /// The gateway's end of the engine's outbox (taken by `run_until_stopped`).
    outbox: (Outbox, OutboxReceiver),
    /// The durable lane's producer, when `[kafka] brokers` is set (or embedded).
    events: Option<EventProducer>,
    /// Publishes the rollout-events outbox, with Kafka.
    relay: Option<crate::rollout_relay::RolloutRelay>,
    /// The in-process Kafka, when no brokers are configured (kept alive until the server
    /// has stopped).
    embedded_kafka: Option<crate::embedded_kafka::EmbeddedKafka>,
}

impl Application {
    pub async fn build(mut settings: Settings) -> anyhow::Result<Application> {
        if settings.mqtt.url.is_none() {
            let mode = crate::broker::EmbeddedMode::parse(&settings.mqtt.embedded)
                .context("mqtt.embedded")?;
            if let Some(addr) = crate::broker::choose_addr(mode)? {
                let max = settings.mqtt.embedded_max_connections;
                let broker = tokio::task::spawn_blocking(move || crate::broker::start(addr, max))
                    .await
                    .context("starting the embedded MQTT broker")??;
                settings.mqtt.url = Some(broker.url());
                // The embedded broker lives and dies with this process, so a persistent
                // session there would hold nothing across a restart; and rumqttd 0.20
                // panics when a persistent session holding a shared subscription
                // reconnects. Always a clean session on it.
                settings.mqtt.client_id = None;
            }
        }
        let embedded_kafka = match (
            &settings.kafka.brokers,
            crate::embedded_kafka::EmbeddedKafkaMode::parse(&settings.kafka.embedded),
        ) {
            (None, Some(crate::embedded_kafka::EmbeddedKafkaMode::Auto)) => {
                let partitions = settings.kafka.partitions;
                let kafka = crate::embedded_kafka::start(&[
                    (settings.kafka.topic.clone(), partitions),
                    (settings.kafka.rollout_topic.clone(), partitions),
                ])
                .context("starting the in-process Kafka")?;
                tracing::warn!(
                    brokers = kafka.bootstrap_servers(),
                    "no kafka.brokers: running an in-process Kafka (librdkafka mock cluster, in memory) for development; not for production"
                );
                settings.kafka.brokers = Some(kafka.bootstrap_servers().to_owned());
                Some(kafka)
            }
            _ => None,
        };
        std::fs::create_dir_all(&settings.data_dir).with_context(|| {
            format!(
                "creating the data directory {}",
                settings.data_dir.display()
            )
        })?;
        let delta_settings = settings.delta.clone();
        let url = settings.database_url();
        let store = Store::connect(&url, settings.database_max_connections)
            .await
            .with_context(|| {
                format!(
                    "opening the database ({})",
                    url.split('@').next_back().unwrap_or("")
                )
            })?;
        let blobs = BlobStore::open(&settings.blobs, &settings.data_dir)
            .await
            .context("opening the blob store")?;
        // Scratch files of uploads and delta builds a crash or kill interrupted. A
        // replica sharing the directory writes its live uploads at least once per idle
        // timeout, and its delta builds within the hour, so theirs stay.
        let stale_after = crate::blobs::STALE_TEMP_AFTER.max(Duration::from_secs(
            2 * settings.limits.upload_idle_timeout_seconds,
        ));
        let removed = blobs
            .remove_stale_temp(std::time::SystemTime::now(), stale_after)
            .context("cleaning the blob store's temporary files")?;
        if !removed.is_empty() {
            tracing::info!(
                files = removed.len(),
                "removed temporary files left by an interrupted upload or delta build"
            );
        }
        let keys = match &settings.key_dir {
            Some(dir) => ServerKeys::load(dir)
                .with_context(|| format!("loading keys from {}", dir.display()))?,
            None => ServerKeys::load_or_create_dev(
                &settings.data_dir.join("dev-keys"),
                Timestamp::from_datetime(chrono::Utc::now()),
            )
            .context("creating development keys")?,
        };
        let listener = TcpListener::bind(&settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let address = listener.local_addr().context("reading the bound address")?;
        let public_url = settings
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{address}"));
        let requeued = store.requeue_interrupted_delta_jobs().await?;
        if requeued > 0 {
            tracing::info!(requeued, "re-queued delta jobs interrupted by a restart");
        }
        let breakers = api::dependencies::DependencyBreakers::new(&settings.dependency_breakers);
        let events = match &settings.kafka.brokers {
            Some(brokers) => {
                // A managed cluster may forbid creating topics: then it must exist.
                for topic in [&settings.kafka.topic, &settings.kafka.rollout_topic] {
                    if let Err(err) = crate::events::ensure_topic(&settings.kafka, topic).await {
                        tracing::warn!(%err, topic, brokers, "creating the Kafka topic failed; it must exist");
                    }
                }
                Some(
                    EventProducer::new(&settings.kafka, breakers.kafka.clone())
                        .context("creating the Kafka producer")?,
                )
            }
            None => None,
        };
        let jobs = Arc::new(Notify::new());
        let settings = Arc::new(settings);
        let keys = Arc::new(keys);
        let vehicle_channel = Arc::new(ChannelHealth::new(
            settings.mqtt.url.is_some(),
            Duration::from_secs(settings.mqtt.stall_seconds.max(1)),
        ));
        let (outbox, outgoing) = gateway::outbox(settings.mqtt.outbox, vehicle_channel.clone());
        let relay_wake = events.as_ref().map(|_| Arc::new(Notify::new()));
        let engine = Engine::new(
            store.clone(),
            keys.clone(),
            settings.clone(),
            public_url.clone(),
            jobs.clone(),
            outbox.clone(),
            relay_wake.clone(),
        );
        let relay = match (&events, relay_wake) {
            (Some(events), Some(wake)) => Some(crate::rollout_relay::RolloutRelay::new(
                store.clone(),
                events.lane(),
                settings.kafka.rollout_topic.clone(),
                gateway::default_client_id(),
                wake,
            )),
            _ => None,
        };
        let state = AppState {
            store,
            blobs,
            keys,
            breakers,
            settings,
            engine,
            vehicle_channel,
            metrics: crate::telemetry::metrics_handle(),
            public_url,
        };
        Ok(Application {
            listener,
            address,
            state,
            jobs,
            delta_engine: Arc::new(BuilderEngine::from_settings(&delta_settings)),
            outbox: (outbox, outgoing),
            events,
            relay,
            embedded_kafka,
        })
    }

    /// Plugs in the delta engine (the default is the production builder, `BuilderEngine`).
    pub fn with_delta_engine(mut self, engine: Arc<dyn DeltaEngine>) -> Application {
        self.delta_engine = engine;
        self
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        // Dropped when this returns, after every task using it has stopped.
        let _embedded_kafka = self.embedded_kafka;
        let (stop_tx, stop_rx) = watch::channel(false);
        let settings = self.state.settings.clone();
        let mut background = Vec::new();
        let (outbox, outgoing) = self.outbox;
        if settings.mqtt.url.is_some() {
            background.push(tokio::spawn(gateway::run(
                settings.mqtt.clone(),
                self.events.clone(),
                self.state.engine.clone(),
                outbox,
                outgoing,
                self.state.vehicle_channel.clone(),
                stop_rx.clone(),
            )));
        } else {
            // No broker: closing the outbox makes every send fail fast (and counted).
            drop(outgoing);
        }
        if let Some(relay) = self.relay {
            background.push(tokio::spawn(relay.run(stop_rx.clone())));
        }
        if settings.kafka.brokers.is_some() {
            // The rollout engine's consumer of the durable lane, beside the gateway.
            background.push(tokio::spawn(crate::events::run_consumer(
                settings.kafka.clone(),
                self.state.engine.clone(),
                stop_rx.clone(),
            )));
        }
        for _ in 0..settings.delta.workers {
            background.push(tokio::spawn(crate::jobs::worker(
                self.state.store.clone(),
                self.state.blobs.clone(),
                self.delta_engine.clone(),
                self.jobs.clone(),
                stop_rx.clone(),
            )));
        }
        {
            let engine = self.state.engine.clone();
            let mut stop = stop_rx.clone();
            let period = Duration::from_millis(settings.director.tick_milliseconds.max(50));
            background.push(tokio::spawn(async move {
                let mut interval = tokio::time::interval(period);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = interval.tick() => {
                            if let Err(err) = engine.tick(crate::engine::wall_clock_ms()).await {
                                tracing::warn!(%err, "rollout engine tick failed");
                            }
                        }
                        _ = stop.changed() => return,
                    }
                }
            }));
        }
        tracing::info!(address = %self.address, "serving");
        let store = self.state.store.clone();
        let app = api::app(self.state);
        let signal_tx = stop_tx.clone();
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                tracing::info!("shutting down: finishing in-flight requests and jobs");
                let _ = signal_tx.send(true);
            })
            .await
            .context("serving HTTP")?;
        let _ = stop_tx.send(true);
        for task in background {
            if tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .is_err()
            {
                tracing::warn!("a background task did not stop within 60 s");
            }
        }
        store.close().await;
        // The lane's clients go before the in-process Kafka they talk to, so its
        // shutdown is not logged as an outage.
        drop(self.events);
        drop(_embedded_kafka);
        tracing::info!("stopped");
        Ok(())
    }
}
