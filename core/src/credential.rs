//! The vehicle request credential (PROTOCOL.md §10, "HTTP credential"), version 2.
//!
//! A vehicle authenticates each HTTP request to the server's vehicle routes with its
//! device key. The signature covers the request it authorises (method and request
//! target: path and query), so a captured credential cannot be presented for another
//! blob, document or method. The header carries the signed method and target in clear
//! only so that the server can say *why* it refuses one; the signature is always
//! checked over the request the server actually received.
//!
//! ```text
//! Authorization: OTA-Vehicle-2 <vehicle_id> <unix_seconds> <METHOD> <request-target> <signature>
//! signed bytes:  "ota-vehicle-request-v2" LF vehicle_id LF unix_seconds LF METHOD LF request-target
//! ```

use crate::encoding::{decode_base64, encode_base64};
use crate::key::{PublicKey, SigningKey};
use crate::protocol::is_valid_vehicle_id;

/// The HTTP authentication scheme of a version 2 credential.
pub const SCHEME: &str = "OTA-Vehicle-2";
/// The first line of the signed bytes (domain separation from every other signature).
pub const CONTEXT: &str = "ota-vehicle-request-v2";
/// The retired version 1 scheme (bound to a time window only): refused with its own kind.
pub const RETIRED_SCHEME_V1: &str = "Vehicle";
/// How far (seconds, either direction) a credential's time may be from the server's clock.
pub const SKEW_SECONDS: i64 = 300;
/// The longest request target a credential may sign.
pub const MAX_TARGET_BYTES: usize = 2048;
/// The longest method a credential may sign.
pub const MAX_METHOD_BYTES: usize = 16;

/// Why a credential does not authenticate a request. [`CredentialError::kind`] is the
/// stable name used in problem documents and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("no vehicle credential")]
    Missing,
    #[error("malformed {SCHEME} credential: {0}")]
    Malformed(&'static str),
    #[error(
        "credential version 1 (`{RETIRED_SCHEME_V1}` scheme, bound to a time only) is retired; \
         send `{SCHEME}`, which signs the request's method and path"
    )]
    RetiredVersion,
    #[error("the credential was signed for method {signed}, presented with {actual}")]
    WrongMethod { signed: String, actual: String },
    #[error("the credential was signed for {signed:?}, presented for {actual:?}")]
    WrongTarget { signed: String, actual: String },
    #[error(
        "the credential's time {signed} is {off} s from the server's clock (at most {SKEW_SECONDS} s)"
    )]
    OutsideWindow { signed: i64, off: i64 },
    #[error("no vehicle {0:?} is registered")]
    UnknownVehicle(String),
    #[error("the signature is not by the device key registered for the vehicle")]
    BadSignature,
}

impl CredentialError {
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialError::Missing => "missing",
            CredentialError::Malformed(_) => "malformed",
            CredentialError::RetiredVersion => "retired_version",
            CredentialError::WrongMethod { .. } => "wrong_method",
            CredentialError::WrongTarget { .. } => "wrong_target",
            CredentialError::OutsideWindow { .. } => "outside_window",
            CredentialError::UnknownVehicle(_) => "unknown_vehicle",
            CredentialError::BadSignature => "bad_signature",
        }
    }
}

/// The request a credential authorises: who, when, and which request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    pub vehicle_id: String,
    pub unix_seconds: i64,
    /// Uppercase ASCII letters, as on the request line (`GET`).
    pub method: String,
    /// The origin-form request target exactly as sent: path, then `?` and the query if
    /// any, percent-encoding untouched.
    pub target: String,
}

fn is_method(method: &str) -> bool {
    !method.is_empty()
        && method.len() <= MAX_METHOD_BYTES
        && method.bytes().all(|b| b.is_ascii_uppercase())
}

fn is_target(target: &str) -> bool {
    target.starts_with('/')
        && target.len() <= MAX_TARGET_BYTES
        && target.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// `[0-9]+` without a leading zero (except `0` itself), within `i64`.
fn parse_seconds(text: &str) -> Option<i64> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

impl SignedRequest {
    /// Checks every field's form (the rules [`parse`] applies).
    pub fn new(
        vehicle_id: &str,
        unix_seconds: i64,
        method: &str,
        target: &str,
    ) -> Result<SignedRequest, CredentialError> {
        if !is_valid_vehicle_id(vehicle_id) {
            return Err(CredentialError::Malformed(
                "vehicle id is not 1-64 bytes of [A-Za-z0-9._-]",
            ));
        }
        if unix_seconds < 0 {
            return Err(CredentialError::Malformed("time is negative"));
        }
        if !is_method(method) {
            return Err(CredentialError::Malformed(
                "method is not 1-16 uppercase ASCII letters",
            ));
        }
        if !is_target(target) {
            return Err(CredentialError::Malformed(
                "request target is not '/' then visible ASCII, at most 2048 bytes",
            ));
        }
        Ok(SignedRequest {
            vehicle_id: vehicle_id.to_owned(),
            unix_seconds,
            method: method.to_owned(),
            target: target.to_owned(),
        })
    }

    /// The exact bytes the device key signs: five lines joined by LF (0x0A), no final LF.
    pub fn message(&self) -> Vec<u8> {
        format!(
            "{CONTEXT}\n{}\n{}\n{}\n{}",
            self.vehicle_id, self.unix_seconds, self.method, self.target
        )
        .into_bytes()
    }

    /// The `Authorization` header value carrying `signature` over [`Self::message`].
    pub fn header(&self, signature: &[u8; 64]) -> String {
        format!(
            "{SCHEME} {} {} {} {} {}",
            self.vehicle_id,
            self.unix_seconds,
            self.method,
            self.target,
            encode_base64(signature)
        )
    }

    /// Signs with an in-memory key (tests, tools); agents sign [`Self::message`] with
    /// their device key wherever it lives and call [`Self::header`].
    pub fn sign(&self, key: &SigningKey) -> String {
        self.header(&key.sign(&self.message()))
    }
}

/// A parsed credential: the request it claims to authorise and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub request: SignedRequest,
    pub signature: [u8; 64],
}

/// Parses an `Authorization` header value. Only the form is checked here.
pub fn parse(value: &str) -> Result<Credential, CredentialError> {
    let Some(rest) = value.strip_prefix(SCHEME).and_then(|r| r.strip_prefix(' ')) else {
        return Err(match value.split_once(' ') {
            Some((scheme, _)) if scheme == RETIRED_SCHEME_V1 => CredentialError::RetiredVersion,
            _ => CredentialError::Malformed("the scheme is not OTA-Vehicle-2"),
        });
    };
    let fields: Vec<&str> = rest.split(' ').collect();
    let [vehicle_id, seconds, method, target, signature] = fields.as_slice() else {
        return Err(CredentialError::Malformed(
            "expected 5 fields separated by single spaces",
        ));
    };
    let unix_seconds = parse_seconds(seconds).ok_or(CredentialError::Malformed(
        "time is not a decimal integer without sign or leading zero",
    ))?;
    let request = SignedRequest::new(vehicle_id, unix_seconds, method, target)?;
    let signature = decode_base64(signature)
        .ok()
        .and_then(|raw| <[u8; 64]>::try_from(raw.as_slice()).ok())
        .ok_or(CredentialError::Malformed(
            "signature is not canonical base64 of 64 bytes",
        ))?;
    Ok(Credential { request, signature })
}

impl Credential {
    /// Is this credential for the request received (`method`, `target` as on the request
    /// line) and within [`SKEW_SECONDS`] of `now_unix_seconds`? Says which part differs.
    pub fn check_request(
        &self,
        method: &str,
        target: &str,
        now_unix_seconds: i64,
    ) -> Result<(), CredentialError> {
        if self.request.method != method {
            return Err(CredentialError::WrongMethod {
                signed: self.request.method.clone(),
                actual: method.to_owned(),
            });
        }
        if self.request.target != target {
            return Err(CredentialError::WrongTarget {
                signed: self.request.target.clone(),
                actual: target.to_owned(),
            });
        }
        let off = now_unix_seconds.saturating_sub(self.request.unix_seconds);
        if off.checked_abs().is_none_or(|off| off > SKEW_SECONDS) {
            return Err(CredentialError::OutsideWindow {
                signed: self.request.unix_seconds,
                off,
            });
        }
        Ok(())
    }

    /// Verifies the signature over the request *received*: `method` and `target` are
    /// those of the request, never taken from the header.
    pub fn verify(
        &self,
        key: &PublicKey,
        method: &str,
        target: &str,
    ) -> Result<(), CredentialError> {
        let received = SignedRequest {
            method: method.to_owned(),
            target: target.to_owned(),
            ..self.request.clone()
        };
        if key.verify_strict(&received.message(), &self.signature) {
            Ok(())
        } else {
            Err(CredentialError::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const BLOB: &str = "/v1/blobs/0000000000000000000000000000000000000000000000000000000000000000";

    fn key() -> SigningKey {
        SigningKey::from_seed(&[7u8; 32])
    }

    fn header(vid: &str, seconds: i64, method: &str, target: &str) -> String {
        SignedRequest::new(vid, seconds, method, target)
            .unwrap()
            .sign(&key())
    }

    /// What the server does: parse, check the request and window, find the key by the
    /// claimed id, verify over the request received.
    fn check(value: &str, method: &str, target: &str) -> Result<String, CredentialError> {
        let credential = parse(value)?;
        credential.check_request(method, target, NOW)?;
        let vid = &credential.request.vehicle_id;
        if vid != "veh-1" && vid != "veh.1" {
            return Err(CredentialError::UnknownVehicle(vid.clone()));
        }
        credential.verify(&key().public_key(), method, target)?;
        Ok(credential.request.vehicle_id)
    }

    /// The worked example of PROTOCOL.md §10: an independent implementation can check
    /// its signed bytes and header against it.
    #[test]
    fn the_protocol_example_is_exact() {
        let request = SignedRequest::new(
            "veh-0001",
            1_800_000_000,
            "GET",
            "/v1/blobs/5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(request.message()).unwrap(),
            "ota-vehicle-request-v2\nveh-0001\n1800000000\nGET\n\
             /v1/blobs/5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
        );
        let key = SigningKey::from_seed(&[1u8; 32]);
        let header = request.sign(&key);
        assert_eq!(header, PROTOCOL_EXAMPLE_HEADER);
        assert_eq!(parse(&header).unwrap().request, request);
    }

    const PROTOCOL_EXAMPLE_HEADER: &str = "OTA-Vehicle-2 veh-0001 1800000000 GET /v1/blobs/5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef 41iiKJvwwPaQK0Ie00AVU6grY5IWivf8LNLkzoODyhmz+tx9kBl+GaeGR0ySbgG0oaCltsmge1qGA2xk3vL0Cg==";

    #[test]
    fn a_credential_authenticates_exactly_its_request() {
        let value = header("veh-1", NOW - 10, "GET", BLOB);
        assert_eq!(check(&value, "GET", BLOB).as_deref(), Ok("veh-1"));
        // Ids with dots, targets with a query: both are just bytes of their field.
        let dotted = header("veh.1", NOW, "GET", "/v1/metadata/targets.json?x=1");
        assert_eq!(
            check(&dotted, "GET", "/v1/metadata/targets.json?x=1").as_deref(),
            Ok("veh.1")
        );
    }

    /// `verify` checks the signature over the method and target it is given (the
    /// request received), whatever the header claims.
    #[test]
    fn verification_is_over_the_received_method_and_target() {
        let credential = parse(&header("veh-1", NOW, "GET", BLOB)).unwrap();
        let public = key().public_key();
        assert_eq!(credential.verify(&public, "GET", BLOB), Ok(()));
        assert_eq!(
            credential.verify(&public, "HEAD", BLOB),
            Err(CredentialError::BadSignature)
        );
        assert_eq!(
            credential.verify(&public, "GET", "/v1/metadata/root/1.json"),
            Err(CredentialError::BadSignature)
        );
    }

    #[test]
    fn seconds_are_digits_without_a_leading_zero_except_zero_itself() {
        assert_eq!(parse_seconds("0"), Some(0));
        assert_eq!(parse_seconds("10"), Some(10));
        assert_eq!(parse_seconds("01"), None);
        assert_eq!(parse_seconds("00"), None);
        assert_eq!(parse_seconds(""), None);
        assert_eq!(parse_seconds("-1"), None);
        assert_eq!(parse_seconds("9223372036854775808"), None, "past i64");
    }

    #[test]
    fn a_credential_replayed_for_another_request_is_refused_by_name() {
        let value = header("veh-1", NOW, "GET", BLOB);
        let other = format!("/v1/blobs/{}", "1".repeat(64));
        assert_eq!(
            check(&value, "GET", &other).map_err(|e| e.kind()),
            Err("wrong_target")
        );
        assert_eq!(
            check(&value, "HEAD", BLOB).map_err(|e| e.kind()),
            Err("wrong_method")
        );
        assert_eq!(
            check(&value, "GET", &format!("{BLOB}?a=b")).map_err(|e| e.kind()),
            Err("wrong_target"),
            "the query is part of the target"
        );
        // Rewriting the claimed fields to match does not help: the signature is over the
        // request received.
        let forged = value.replace(BLOB, &other);
        assert_eq!(
            check(&forged, "GET", &other),
            Err(CredentialError::BadSignature)
        );
        let forged = value.replacen(" GET ", " PUT ", 1);
        assert_eq!(
            check(&forged, "PUT", BLOB),
            Err(CredentialError::BadSignature)
        );
    }

    #[test]
    fn time_window_and_key_are_enforced() {
        let stale = header("veh-1", NOW - SKEW_SECONDS - 1, "GET", BLOB);
        assert_eq!(
            check(&stale, "GET", BLOB).map_err(|e| e.kind()),
            Err("outside_window")
        );
        let early = header("veh-1", NOW + SKEW_SECONDS + 1, "GET", BLOB);
        assert_eq!(
            check(&early, "GET", BLOB).map_err(|e| e.kind()),
            Err("outside_window")
        );
        let edge = header("veh-1", NOW + SKEW_SECONDS, "GET", BLOB);
        assert!(check(&edge, "GET", BLOB).is_ok());
        let unknown = header("veh-2", NOW, "GET", BLOB);
        assert_eq!(
            check(&unknown, "GET", BLOB).map_err(|e| e.kind()),
            Err("unknown_vehicle")
        );
        let request = SignedRequest::new("veh-1", NOW, "GET", BLOB).unwrap();
        let other_key = request.sign(&SigningKey::from_seed(&[8u8; 32]));
        assert_eq!(
            check(&other_key, "GET", BLOB),
            Err(CredentialError::BadSignature)
        );
    }

    #[test]
    fn malformed_and_retired_credentials_are_refused_by_name() {
        let good = header("veh-1", NOW, "GET", BLOB);
        let sig = good.rsplit(' ').next().unwrap();
        let cases = [
            format!("Vehicle veh-1.{NOW}.{sig}"),
            format!("Bearer {sig}"),
            format!("OTA-Vehicle-2  veh-1 {NOW} GET {BLOB} {sig}"),
            format!("OTA-Vehicle-2 veh-1 {NOW} GET {BLOB}"),
            format!("OTA-Vehicle-2 veh-1 {NOW} GET {BLOB} {sig} extra"),
            format!("OTA-Vehicle-2 veh/1 {NOW} GET {BLOB} {sig}"),
            format!("OTA-Vehicle-2 veh-1 +{NOW} GET {BLOB} {sig}"),
            format!("OTA-Vehicle-2 veh-1 0{NOW} GET {BLOB} {sig}"),
            format!("OTA-Vehicle-2 veh-1 -5 GET {BLOB} {sig}"),
            format!("OTA-Vehicle-2 veh-1 99999999999999999999 GET {BLOB} {sig}"),
            format!("OTA-Vehicle-2 veh-1 {NOW} get {BLOB} {sig}"),
            format!("OTA-Vehicle-2 veh-1 {NOW} GET v1/blobs {sig}"),
            format!("OTA-Vehicle-2 veh-1 {NOW} GET /{} {sig}", "a".repeat(2048)),
            format!("OTA-Vehicle-2 veh-1 {NOW} GET {BLOB} AAAA"),
        ];
        let kinds: Vec<&str> = cases
            .iter()
            .map(|c| check(c, "GET", BLOB).unwrap_err().kind())
            .collect();
        let mut expected = vec!["malformed"; cases.len()];
        expected[0] = "retired_version";
        assert_eq!(kinds, expected, "{cases:#?}");
    }
}
