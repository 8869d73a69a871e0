//! The vehicle channel under stress, against the machine's Mosquitto: open-loop overload
//! (the gateway sheds what it cannot handle and keeps answering), a broker drop (seen in
//! `/readyz`, then reconnected), and shutdown while check-ins pour in.

use crate::helpers::{
    checkin, device_key, mqtt_url, require_service, signed_checkin, spawn_app_with, unique,
    Backend, Options, TestApp,
};
use crate::mqtt::{director_metadata, mqtt_app_with, wait_broker, wait_ready, VehicleClient};
use ota_core::key::SigningKey;
use ota_core::protocol::{topic, Channel};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

fn broker() -> (String, u16) {
    let url: ota_core::endpoint::BrokerUrl = mqtt_url().parse().expect("broker url");
    (url.host().to_owned(), url.port())
}

/// Registers `n` vehicles named `<prefix><i>` with fresh keys.
async fn fleet(app: &TestApp, prefix: &str, n: usize) -> Vec<(String, SigningKey)> {
    let mut vehicles = Vec::with_capacity(n);
    for i in 0..n {
        let (vid, key) = (format!("{prefix}{i}"), device_key());
        app.register_vehicle(&vid, &key, "hw-load", &[]).await;
        vehicles.push((vid, key));
    }
    vehicles
}

/// Publishes `messages` (topic, payload) with QoS 1 from `publishers` connections as fast
/// as the broker takes them (open loop: nothing waits for an answer). The handle resolves
/// once the broker has acknowledged every one.
fn flood(messages: Vec<(String, Vec<u8>)>, publishers: usize) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let per = messages.len().div_ceil(publishers);
        let mut tasks = Vec::new();
        let mut chunks = messages.into_iter().peekable();
        while chunks.peek().is_some() {
            let chunk: Vec<_> = chunks.by_ref().take(per).collect();
            tasks.push(tokio::spawn(async move {
                let (host, port) = broker();
                let options = MqttOptions::new(unique("load-"), host, port);
                let (client, mut eventloop) = AsyncClient::new(options, 1024);
                let expected = chunk.len();
                let acks = tokio::spawn(async move {
                    let mut acked = 0;
                    while acked < expected {
                        match eventloop.poll().await {
                            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                            Ok(_) => {}
                            Err(err) => panic!("load publisher lost the broker: {err}"),
                        }
                    }
                    acked
                });
                for (t, payload) in chunk {
                    client
                        .publish(t, QoS::AtLeastOnce, false, payload)
                        .await
                        .expect("queueing a publish");
                }
                let acked = acks.await.expect("ack counter");
                let _ = client.disconnect().await;
                acked
            }));
        }
        let mut total = 0;
        for task in tasks {
            total += task.await.expect("publisher");
        }
        total
    })
}

/// `count` signed check-ins spread over `vehicles`, each with its own nonce.
fn checkins(vehicles: &[(String, SigningKey)], count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let (vid, key) = &vehicles[i % vehicles.len()];
            (
                topic(vid, Channel::CheckIn),
                signed_checkin(key, &checkin(vid, Some(("1.0.0", b"old")), 0)),
            )
        })
        .collect()
}

/// Counts directives the server publishes to vehicles whose id starts with `prefix`.
async fn count_directives(prefix: String) -> Arc<AtomicU64> {
    let count = Arc::new(AtomicU64::new(0));
    let (host, port) = broker();
    let mut options = MqttOptions::new(unique("counter-"), host, port);
    options.set_max_packet_size(1024 * 1024, 1024 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .subscribe(format!("ota/v1/+/{}", "directive"), QoS::AtMostOnce)
        .await
        .unwrap();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let counter = count.clone();
    tokio::spawn(async move {
        let _client = client;
        let mut subscribed_tx = Some(subscribed_tx);
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) if p.topic.starts_with(&prefix) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .expect("SUBACK")
        .unwrap();
    count
}

/// A fresh vehicle's check-in gets a signed directive (re-sent every 2 s, at most 60 s:
/// the broker may still be delivering the backlog of an overload).
async fn fresh_checkin_is_answered(app: &TestApp) {
    let (vid, key) = (unique("fresh-"), device_key());
    app.register_vehicle(&vid, &key, "hw-load", &[]).await;
    let mut vehicle = VehicleClient::connect(&[&vid]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let message = signed_checkin(&key, &checkin(&vid, Some(("1.0.0", b"old")), 0));
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            vehicle.expect(
                &topic(&vid, Channel::Directive),
                Some((&vid, Channel::CheckIn, &message)),
            ),
        )
        .await;
        if let Ok(bytes) = answer {
            let directive = director_metadata(app, &bytes);
            assert_eq!(directive.vehicle_id, vid);
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a fresh check-in was not answered within 60 s"
        );
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_sheds_keeps_answering_and_stops_cleanly() {
    // A small pool, so that the flood is well above what the server can handle.
    let Some(app) = mqtt_app_with(Options {
        mqtt_workers: Some(4),
        mqtt_queue: Some(32),
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let prefix = unique("ovl-");
    let vehicles = fleet(&app, &prefix, 50).await;
    let answered = count_directives(format!("ota/v1/{prefix}")).await;
    const SENT: usize = 20_000;
    let messages = checkins(&vehicles, SENT);
    let started = Instant::now();
    let acked = flood(messages, 4).await.expect("flood");
    let flood_time = started.elapsed();
    assert_eq!(acked, SENT, "the broker took every check-in");

    // Still answering, and ready.
    fresh_checkin_is_answered(&app).await;
    wait_ready(&app).await;
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counts = app.state.vehicle_channel.counts();
    let answered_now = answered.load(Ordering::Relaxed);
    eprintln!(
        "overload: {SENT} check-ins published in {flood_time:?}; the server received {}, \
         shed {}, handled {}; {answered_now} directives seen",
        counts.received, counts.shed, counts.handled
    );
    let shed_metric = metric(&metrics, "ota_vehicle_messages_shed_total");
    assert!(
        (shed_metric > 0.0 && counts.shed > 0) || answered_now >= SENT as u64,
        "overload must be shed (and counted in /metrics) or fully answered: \
         shed_total={shed_metric}, counts={counts:?}, answered={answered_now}"
    );

    // Shutdown while another flood is pouring in: the server stops cleanly (TestApp::stop
    // asserts a clean exit within 30 s).
    let before = app.state.vehicle_channel.counts().received;
    let second = flood(checkins(&vehicles, 5_000), 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while app.state.vehicle_channel.counts().received < before + 500 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second flood never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = Instant::now();
    app.stop().await;
    eprintln!("overload: stopped under load in {:?}", stopping.elapsed());
    second.abort();
}

/// A loopback TCP proxy in front of the broker that can drop every connection and refuse
/// new ones ("down") until brought back "up".
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    kill: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (kill, _) = watch::channel(0u64);
        let task = {
            let (up, kill) = (up.clone(), kill.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let mut killed = kill.subscribe();
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = killed.changed() => {}
                        }
                    });
                }
            })
        };
        Proxy {
            port,
            up,
            kill,
            task,
        }
    }

    /// Drops every proxied connection and refuses new ones.
    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.kill.send_modify(|generation| *generation += 1);
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_drop_is_reported_and_the_server_reconnects() {
    if !require_service("mosquitto", &mqtt_url()).await {
        return;
    }
    let (host, port) = broker();
    let proxy = Proxy::start(format!("{host}:{port}")).await;
    let app = spawn_app_with(
        Backend::Sqlite,
        Options {
            mqtt_url_unchecked: Some(format!("mqtt://127.0.0.1:{}", proxy.port)),
            ..Options::default()
        },
    )
    .await
    .expect("sqlite never skips");
    wait_ready(&app).await;
    fresh_checkin_is_answered(&app).await;

    proxy.down();
    wait_broker(&app, "disconnected", Duration::from_secs(30)).await;
    let response = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(
        response.status().as_u16(),
        503,
        "not ready without the broker"
    );

    proxy.up();
    wait_broker(&app, "ok", Duration::from_secs(60)).await;
    fresh_checkin_is_answered(&app).await;
    app.stop().await;
}
