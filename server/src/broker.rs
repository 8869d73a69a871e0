//! The embedded MQTT broker (rumqttd) for `ota-server serve` with no broker configured:
//! a laptop, a demo, a test bench. Production points `mqtt.url` at a real broker
//! (Mosquitto, EMQX, HiveMQ) and this never starts.
//!
//! rumqttd runs its router and listener on threads of its own; it lives until the
//! process exits. It has no ACLs: any client may use any topic, which is why it is for
//! development only (vehicles' messages are still signed end to end, so a client can
//! eavesdrop or drop, not forge).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Where `mqtt.embedded = "auto"` listens when that port is free.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:1883";

/// How `mqtt.embedded` is set: off, the default port (or any free one when it is
/// taken), or exactly this address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddedMode {
    Off,
    Auto,
    At(SocketAddr),
}

impl EmbeddedMode {
    pub fn parse(text: &str) -> Option<EmbeddedMode> {
        match text {
            "off" => Some(EmbeddedMode::Off),
            "auto" => Some(EmbeddedMode::Auto),
            other => other.parse().ok().map(EmbeddedMode::At),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the embedded MQTT broker cannot listen on {addr}: {source} (another broker there? set mqtt.url to use it, or mqtt.embedded to another host:port)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the embedded MQTT broker did not start: {0}")]
    Start(String),
}

/// A running embedded broker.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    pub addr: SocketAddr,
}

impl EmbeddedBroker {
    /// `mqtt://host:port`, what the gateway and agents connect to.
    pub fn url(&self) -> ota_core::endpoint::BrokerUrl {
        ota_core::endpoint::BrokerUrl::new(self.addr.ip().to_string(), self.addr.port())
    }
}

/// The address to listen on: `At` as given (it must be free), `Auto` the default port
/// if free, else a free port on loopback.
pub fn choose_addr(mode: EmbeddedMode) -> Result<Option<SocketAddr>, BrokerError> {
    let probe = |addr: SocketAddr| {
        TcpListener::bind(addr)
            .and_then(|l| l.local_addr())
            .map_err(|source| BrokerError::Bind { addr, source })
    };
    match mode {
        EmbeddedMode::Off => Ok(None),
        EmbeddedMode::At(addr) => probe(addr).map(Some),
        EmbeddedMode::Auto => {
            let default: SocketAddr = DEFAULT_LISTEN.parse().expect("a socket address");
            match probe(default) {
                Ok(addr) => Ok(Some(addr)),
                Err(_) => probe("127.0.0.1:0".parse().expect("a socket address")).map(Some),
            }
        }
    }
}

fn config(addr: SocketAddr, max_connections: usize) -> Result<rumqttd::Config, BrokerError> {
    let server = serde_json::json!({
        "name": "ota-embedded",
        "listen": addr.to_string(),
        "next_connection_delay_ms": 1,
        "connections": {
            "connection_timeout_ms": 60000,
            "max_payload_size": 1 << 20,
            "max_inflight_count": 500,
            "dynamic_filters": true,
        },
    });
    let config = serde_json::json!({
        "id": 0,
        "router": {
            "id": 0,
            "max_connections": max_connections,
            "max_outgoing_packet_count": 1000,
            "max_segment_size": 104_857_600,
            "max_segment_count": 10,
        },
        "v4": HashMap::from([("1", server)]),
    });
    serde_json::from_value(config).map_err(|e| BrokerError::Start(format!("configuration: {e}")))
}

/// Starts rumqttd on `addr` and waits until it accepts connections.
pub fn start(addr: SocketAddr, max_connections: usize) -> Result<EmbeddedBroker, BrokerError> {
    let mut broker = rumqttd::Broker::new(config(addr, max_connections)?);
    std::thread::Builder::new()
        .name("mqtt-embedded".to_owned())
        .spawn(move || {
            if let Err(err) = broker.start() {
                tracing::error!(%err, "embedded MQTT broker stopped");
            }
        })
        .map_err(|e| BrokerError::Start(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(BrokerError::Start(format!(
                "nothing listens on {addr} after 10 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(%addr, "embedded MQTT broker (rumqttd, no ACLs): for development; set mqtt.url for a production broker");
    Ok(EmbeddedBroker { addr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(EmbeddedMode::parse("off"), Some(EmbeddedMode::Off));
        assert_eq!(EmbeddedMode::parse("auto"), Some(EmbeddedMode::Auto));
        assert_eq!(
            EmbeddedMode::parse("127.0.0.1:1999"),
            Some(EmbeddedMode::At("127.0.0.1:1999".parse().unwrap()))
        );
        assert_eq!(EmbeddedMode::parse("localhost"), None);
    }

    #[test]
    fn an_explicit_address_in_use_is_an_error_and_auto_moves_on() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = choose_addr(EmbeddedMode::At(addr)).unwrap_err();
        assert!(err.to_string().contains("mqtt.url"), "{err}");
        assert!(choose_addr(EmbeddedMode::Auto).unwrap().is_some());
        assert_eq!(choose_addr(EmbeddedMode::Off).unwrap(), None);
    }

    #[test]
    fn the_configuration_is_what_rumqttd_accepts() {
        let c = config("127.0.0.1:1999".parse().unwrap(), 100).unwrap();
        assert_eq!(c.router.max_connections, 100);
        assert!(c.v4.is_some());
    }
}
