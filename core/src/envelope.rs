//! The DSSE signed envelope (as in in-toto and Sigstore).
//!
//! Wire form: `{"payloadType": string, "payload": base64(bytes), "signatures":
//! [{"keyid": string, "sig": base64(64 bytes)}]}`. A signature covers
//! `PAE(payloadType, payload)` = `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`,
//! where LEN is the ASCII decimal byte count and SP one space. The payload's exact bytes
//! are what is signed and parsed — never a re-serialization.

use crate::encoding::{decode_base64, encode_base64, from_slice_exact};
use crate::error::Error;
use crate::key::SigningKey;
use serde::{Deserialize, Serialize};

/// Largest envelope we parse. Metadata is small; anything bigger is an endless-data
/// attack, refused before parsing.
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;
/// Most signatures one envelope may carry; more is refused before any is checked.
pub const MAX_SIGNATURES: usize = 64;

/// The payload types of the role documents.
pub const PAYLOAD_TYPE_ROOT: &str = "application/vnd.ota.root+json";
pub const PAYLOAD_TYPE_TARGETS: &str = "application/vnd.ota.targets+json";
pub const PAYLOAD_TYPE_DIRECTOR: &str = "application/vnd.ota.director+json";

/// One signature as carried on the wire. Kept as text: a malformed signature must not
/// make the envelope unreadable (a garbage signature beside a valid threshold is
/// harmless), so each one is decoded and judged on its own in `threshold`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    pub keyid: String,
    pub sig: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WireEnvelope {
    payload_type: String,
    payload: String,
    signatures: Vec<EnvelopeSignature>,
}

/// A parsed envelope: the payload type, the decoded payload bytes, the signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub payload_type: String,
    pub payload: Vec<u8>,
    pub signatures: Vec<EnvelopeSignature>,
}

/// Pre-Authentication Encoding of DSSE v1.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

impl Envelope {
    /// Parses the wire form, with size, count and encoding limits.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(Error::EnvelopeTooLarge {
                size: bytes.len(),
                limit: MAX_ENVELOPE_BYTES,
            });
        }
        let wire: WireEnvelope =
            from_slice_exact(bytes).map_err(|reason| Error::MalformedEnvelope { reason })?;
        if wire.signatures.len() > MAX_SIGNATURES {
            return Err(Error::MalformedEnvelope {
                reason: format!(
                    "{} signatures, at most {MAX_SIGNATURES} allowed",
                    wire.signatures.len()
                ),
            });
        }
        let payload = decode_base64(&wire.payload).map_err(|e| Error::MalformedEnvelope {
            reason: format!("payload is not canonical standard base64: {e}"),
        })?;
        Ok(Envelope {
            payload_type: wire.payload_type,
            payload,
            signatures: wire.signatures,
        })
    }

    /// Signs `payload` with every key given, in order.
    pub fn sign(payload_type: &str, payload: Vec<u8>, keys: &[&SigningKey]) -> Self {
        let message = pae(payload_type, &payload);
        let signatures = keys
            .iter()
            .map(|key| EnvelopeSignature {
                keyid: key.key_id().as_str().to_owned(),
                sig: encode_base64(&key.sign(&message)),
            })
            .collect();
        Envelope {
            payload_type: payload_type.to_owned(),
            payload,
            signatures,
        }
    }

    /// Adds one more signature (e.g. a second root key holder co-signing).
    pub fn add_signature(&mut self, key: &SigningKey) {
        let message = pae(&self.payload_type, &self.payload);
        self.signatures.push(EnvelopeSignature {
            keyid: key.key_id().as_str().to_owned(),
            sig: encode_base64(&key.sign(&message)),
        });
    }

    /// The message every signature covers.
    pub fn signed_message(&self) -> Vec<u8> {
        pae(&self.payload_type, &self.payload)
    }

    /// The wire form (compact JSON).
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let wire = WireEnvelope {
            payload_type: self.payload_type.clone(),
            payload: encode_base64(&self.payload),
            signatures: self.signatures.clone(),
        };
        // Serializing plain strings and vectors cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_specification_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn envelope_round_trips_through_its_wire_form() {
        let key = SigningKey::from_seed(&[1u8; 32]);
        let envelope = Envelope::sign("t", b"{\"a\":1}".to_vec(), &[&key]);
        let parsed = Envelope::parse(&envelope.to_json_bytes()).unwrap();
        assert_eq!(parsed, envelope);
    }

    #[test]
    fn malformed_envelopes_are_refused_with_a_reason() {
        let cases: &[&[u8]] = &[
            b"",
            b"{}",
            br#"{"payloadType":"t","payload":"!!","signatures":[]}"#,
            br#"{"payloadType":"t","payload":"","signatures":[],"extra":1}"#,
            br#"{"payloadType":"t","payloadType":"u","payload":"","signatures":[]}"#,
            br#"{"payloadType":"t","payload":"","signatures":[]} "#,
        ];
        for case in cases {
            assert!(
                matches!(Envelope::parse(case), Err(Error::MalformedEnvelope { .. })),
                "{:?} must be refused as malformed",
                String::from_utf8_lossy(case)
            );
        }
        let huge = vec![b' '; MAX_ENVELOPE_BYTES + 1];
        assert!(matches!(
            Envelope::parse(&huge),
            Err(Error::EnvelopeTooLarge { .. })
        ));
    }

    /// An envelope with `count` (dummy) signatures.
    fn with_signatures(count: usize) -> Vec<u8> {
        let signature = r#"{"keyid":"k","sig":""}"#;
        format!(
            r#"{{"payloadType":"t","payload":"","signatures":[{}]}}"#,
            vec![signature; count].join(",")
        )
        .into_bytes()
    }

    #[test]
    fn limits_are_inclusive_one_mib_and_64_signatures() {
        // Exactly the limit is not too large (these bytes are refused for their form).
        let at_limit = vec![b' '; MAX_ENVELOPE_BYTES];
        assert!(matches!(
            Envelope::parse(&at_limit),
            Err(Error::MalformedEnvelope { .. })
        ));
        let parsed = Envelope::parse(&with_signatures(MAX_SIGNATURES)).unwrap();
        assert_eq!(parsed.signatures.len(), MAX_SIGNATURES);
        for count in [MAX_SIGNATURES + 1, MAX_SIGNATURES + 2] {
            assert!(matches!(
                Envelope::parse(&with_signatures(count)),
                Err(Error::MalformedEnvelope { reason }) if reason.contains(&format!("{count} signatures"))
            ));
        }
    }

    #[test]
    fn a_co_signature_covers_the_same_message() {
        let (first, second) = (
            SigningKey::from_seed(&[1; 32]),
            SigningKey::from_seed(&[2; 32]),
        );
        let mut envelope = Envelope::sign("t", b"{}".to_vec(), &[&first]);
        envelope.add_signature(&second);
        assert_eq!(
            envelope,
            Envelope::sign("t", b"{}".to_vec(), &[&first, &second])
        );
    }
}
