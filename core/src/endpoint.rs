//! Service addresses the server and the agent both read from configuration, parsed once
//! into typed values: [`BrokerUrl`], the MQTT broker.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The MQTT port when a URL names none.
pub const DEFAULT_MQTT_PORT: u16 = 1883;

/// An MQTT broker: `mqtt://host[:port]` (or `tcp://`), port 1883 when omitted. Read
/// from and written to configuration as that text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BrokerUrl {
    host: String,
    port: u16,
}

/// Why a text is not a broker URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerUrlError {
    #[error("expected mqtt://host[:port], got {0:?}")]
    Scheme(String),
    #[error("no host in {0:?}")]
    NoHost(String),
    #[error("the port of {0:?} is not a number 1-65535")]
    Port(String),
}

impl BrokerUrl {
    pub fn new(host: impl Into<String>, port: u16) -> BrokerUrl {
        BrokerUrl {
            host: host.into(),
            port,
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, for a socket connect.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl FromStr for BrokerUrl {
    type Err = BrokerUrlError;

    fn from_str(text: &str) -> Result<BrokerUrl, BrokerUrlError> {
        let rest = text
            .strip_prefix("mqtt://")
            .or_else(|| text.strip_prefix("tcp://"))
            .ok_or_else(|| BrokerUrlError::Scheme(text.to_owned()))?
            .trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| BrokerUrlError::Port(text.to_owned()))?,
            ),
            None => (rest, DEFAULT_MQTT_PORT),
        };
        if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
            return Err(BrokerUrlError::NoHost(text.to_owned()));
        }
        Ok(BrokerUrl::new(host, port))
    }
}

impl TryFrom<String> for BrokerUrl {
    type Error = BrokerUrlError;

    fn try_from(text: String) -> Result<BrokerUrl, BrokerUrlError> {
        text.parse()
    }
}

impl From<BrokerUrl> for String {
    fn from(url: BrokerUrl) -> String {
        url.to_string()
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mqtt://{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_a_default_port_and_print_in_one_form() {
        let url: BrokerUrl = "mqtt://127.0.0.1:1884".parse().unwrap();
        assert_eq!((url.host(), url.port()), ("127.0.0.1", 1884));
        assert_eq!(url.to_string(), "mqtt://127.0.0.1:1884");
        let url: BrokerUrl = "tcp://broker/".parse().unwrap();
        assert_eq!((url.host(), url.port()), ("broker", 1883));
        assert_eq!(url.to_string(), "mqtt://broker:1883");
        assert_eq!(url.address(), "broker:1883");
    }

    #[test]
    fn what_is_not_a_broker_url_is_refused_with_the_reason() {
        for (text, want) in [
            (
                "http://b:1883",
                BrokerUrlError::Scheme("http://b:1883".into()),
            ),
            ("b:1883", BrokerUrlError::Scheme("b:1883".into())),
            (
                "mqtt://:1883",
                BrokerUrlError::NoHost("mqtt://:1883".into()),
            ),
            ("mqtt://", BrokerUrlError::NoHost("mqtt://".into())),
            (
                "mqtt://u@b:1",
                BrokerUrlError::NoHost("mqtt://u@b:1".into()),
            ),
            ("mqtt://b/x", BrokerUrlError::NoHost("mqtt://b/x".into())),
            (
                "mqtt://b:notaport",
                BrokerUrlError::Port("mqtt://b:notaport".into()),
            ),
            (
                "mqtt://b:99999",
                BrokerUrlError::Port("mqtt://b:99999".into()),
            ),
            ("mqtt://b:0", BrokerUrlError::Port("mqtt://b:0".into())),
        ] {
            assert_eq!(text.parse::<BrokerUrl>(), Err(want), "{text}");
        }
    }

    #[test]
    fn configuration_reads_and_writes_the_text_form() {
        let url: BrokerUrl = serde_json::from_str("\"mqtt://h:2\"").unwrap();
        assert_eq!(url, BrokerUrl::new("h", 2));
        assert_eq!(serde_json::to_string(&url).unwrap(), "\"mqtt://h:2\"");
        let err = serde_json::from_str::<BrokerUrl>("\"h:2\"").unwrap_err();
        assert!(err.to_string().contains("expected mqtt://"), "{err}");
    }
}
