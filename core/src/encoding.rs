//! Strict wire encodings shared by every signed document.
//!
//! Signed payloads are parsed from their exact bytes. We refuse anything that two
//! parsers could read differently: duplicate object keys (serde's derive already refuses
//! duplicate struct fields; [`StrictMap`] does the same for maps), unknown fields
//! (`deny_unknown_fields` on every type) and bytes after the JSON value.

use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// Parses exactly one JSON value that spans the whole input: no leading or trailing
/// bytes of any kind (not even whitespace).
pub fn from_slice_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    if bytes.first().is_some_and(u8::is_ascii_whitespace) {
        return Err("leading whitespace before the JSON value".to_owned());
    }
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<T>();
    let value = match stream.next() {
        Some(Ok(value)) => value,
        Some(Err(err)) => return Err(err.to_string()),
        None => return Err("empty input".to_owned()),
    };
    let consumed = stream.byte_offset();
    if consumed != bytes.len() {
        return Err(format!(
            "{} trailing byte(s) after the JSON value at offset {consumed}",
            bytes.len() - consumed
        ));
    }
    Ok(value)
}

/// A JSON object read into a sorted map that refuses duplicate keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StrictMap<K: Ord, V>(pub BTreeMap<K, V>);

impl<K: Ord, V> StrictMap<K, V> {
    pub fn get(&self, key: &K) -> Option<&V> {
        self.0.get(key)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for StrictMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        StrictMap(iter.into_iter().collect())
    }
}

impl<K: Ord + Serialize, V: Serialize> Serialize for StrictMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de, K, V> Deserialize<'de> for StrictMap<K, V>
where
    K: Ord + Deserialize<'de> + fmt::Debug,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrictMapVisitor<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K, V> Visitor<'de> for StrictMapVisitor<K, V>
        where
            K: Ord + Deserialize<'de> + fmt::Debug,
            V: Deserialize<'de>,
        {
            type Value = StrictMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object without duplicate keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = BTreeMap::new();
                while let Some((key, value)) = access.next_entry::<K, V>()? {
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
                    }
                    map.insert(key, value);
                }
                Ok(StrictMap(map))
            }
        }
        deserializer.deserialize_map(StrictMapVisitor(std::marker::PhantomData))
    }
}

/// A SHA-256 digest, written on the wire as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Sha256Digest(sha2::Sha256::digest(bytes).into())
    }

    /// Parses 64 lowercase hex digits.
    pub fn parse(text: &str) -> Result<Self, String> {
        parse_lower_hex::<32>(text).map(Sha256Digest)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Sha256Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Parses exactly `2 * N` lowercase hex digits into `N` bytes. Uppercase is refused so
/// that each value has exactly one spelling (key ids are compared as strings by others).
pub fn parse_lower_hex<const N: usize>(text: &str) -> Result<[u8; N], String> {
    if text.len() != 2 * N {
        return Err(format!(
            "expected {} lowercase hex digits, got {} characters",
            2 * N,
            text.len()
        ));
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("expected lowercase hex digits only".to_owned());
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Standard base64 (RFC 4648 §4, with padding), canonical: non-zero padding bits refused.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| e.to_string())
}

pub fn encode_base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[allow(dead_code)]
        a: u32,
        #[allow(dead_code)]
        m: Option<StrictMap<String, u32>>,
    }

    #[test]
    fn exact_json_accepts_one_value_and_refuses_everything_around_it() {
        let cases: &[(&str, bool)] = &[
            (r#"{"a":1}"#, true),
            (r#"{"a":1,"m":{"x":1,"y":2}}"#, true),
            (r#"{"a":1} "#, false),
            (r#"{"a":1}\n"#, false),
            (r#" {"a":1}"#, false),
            (r#"{"a":1}{"a":2}"#, false),
            (r#"{"a":1,"a":2}"#, false),
            (r#"{"a":1,"m":{"x":1,"x":2}}"#, false),
            (r#"{"a":1,"b":2}"#, false),
            ("", false),
        ];
        for (input, ok) in cases {
            let input = input.replace("\\n", "\n");
            let result = from_slice_exact::<Doc>(input.as_bytes());
            assert_eq!(result.is_ok(), *ok, "input {input:?} gave {result:?}");
        }
    }

    #[test]
    fn a_strict_map_counts_its_entries_and_names_what_it_expected() {
        let map: StrictMap<String, u32> = from_slice_exact(br#"{"x":1,"y":2}"#).unwrap();
        assert_eq!((map.len(), map.is_empty()), (2, false));
        assert_eq!(map.get(&"y".to_owned()), Some(&2));
        let empty: StrictMap<String, u32> = from_slice_exact(b"{}").unwrap();
        assert_eq!((empty.len(), empty.is_empty()), (0, true));
        let not_a_map = from_slice_exact::<StrictMap<String, u32>>(b"[1]").unwrap_err();
        assert!(
            not_a_map.contains("a JSON object without duplicate keys"),
            "{not_a_map}"
        );
    }

    #[test]
    fn hex_is_lowercase_and_exact_length() {
        let digest = Sha256Digest::parse(&"ab".repeat(32)).unwrap();
        assert_eq!(
            digest.to_string(),
            "ab".repeat(32),
            "Display is the wire form"
        );
        assert_eq!(format!("{digest:?}"), format!("sha256:{}", "ab".repeat(32)));
        assert!(
            Sha256Digest::parse(&"AB".repeat(32)).is_err(),
            "uppercase must be refused"
        );
        assert!(
            Sha256Digest::parse(&"ab".repeat(31)).is_err(),
            "short must be refused"
        );
        assert!(
            Sha256Digest::parse(&"ab".repeat(33)).is_err(),
            "long must be refused"
        );
        assert!(
            Sha256Digest::parse(&"zz".repeat(32)).is_err(),
            "non-hex must be refused"
        );
    }

    #[test]
    fn base64_is_canonical() {
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert!(
            decode_base64("aGk").is_err(),
            "missing padding must be refused"
        );
        assert!(
            decode_base64("aGl=").is_err(),
            "non-zero padding bits must be refused"
        );
        assert!(
            decode_base64("aG k=").is_err(),
            "whitespace must be refused"
        );
    }
}
