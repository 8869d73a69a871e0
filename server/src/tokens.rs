//! API bearer tokens and their scopes. A token is `ota_` + 32 random bytes in hex; the
//! database keeps only its SHA-256.

use crate::store::{Actor, Store, StoreError, TokenRecord};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Scope {
    #[serde(rename = "read")]
    Read,
    #[serde(rename = "release:write")]
    ReleaseWrite,
    #[serde(rename = "rollout:write")]
    RolloutWrite,
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::Read,
        Scope::ReleaseWrite,
        Scope::RolloutWrite,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::ReleaseWrite => "release:write",
            Scope::RolloutWrite => "rollout:write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| format!("unknown scope {text:?}; expected one of read, release:write, rollout:write, admin"))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether holding `held` grants `needed`: admin grants everything, any write scope
/// implies read.
pub fn grants(held: &[Scope], needed: Scope) -> bool {
    held.iter()
        .any(|&h| h == needed || h == Scope::Admin || (needed == Scope::Read && h != Scope::Read))
}

pub fn hash_token(token: &str) -> String {
    ota_core::encoding::Sha256Digest::of(token.as_bytes()).to_hex()
}

pub fn generate_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    Ok(format!("ota_{}", hex::encode(bytes)))
}

/// Creates a token and returns (its record, the secret — shown once, never stored).
pub async fn create_token(
    store: &Store,
    actor: &Actor,
    name: &str,
    scopes: &[Scope],
) -> Result<(TokenRecord, String), StoreError> {
    create_expiring_token(store, actor, name, scopes, None).await
}

/// Longest `--expires-in`: ten years.
pub const MAX_EXPIRES_IN_SECONDS: u64 = 3650 * 86_400;

/// A token lifetime as given to `tokens create --expires-in`: a whole number of seconds
/// with a unit, `s`, `m`, `h` or `d` (`90d`, `12h`), at most ten years.
pub fn parse_lifetime(text: &str) -> Result<u64, String> {
    let expected = || {
        format!("expected a whole number with a unit s, m, h or d (e.g. 90d), at most 3650d; got {text:?}")
    };
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let multiplier = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(expected()),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(expected());
    }
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .filter(|s| (1..=MAX_EXPIRES_IN_SECONDS).contains(s))
        .ok_or_else(expected)?;
    Ok(seconds)
}

/// A token refused from `expires_ms` (unix milliseconds) on; `None`: it never expires.
pub async fn create_expiring_token(
    store: &Store,
    actor: &Actor,
    name: &str,
    scopes: &[Scope],
    expires_ms: Option<i64>,
) -> Result<(TokenRecord, String), StoreError> {
    let token = generate_token().map_err(|e| StoreError::Corrupt {
        what: "random source",
        reason: e.to_string(),
    })?;
    let scopes: Vec<String> = scopes.iter().map(|s| s.as_str().to_owned()).collect();
    let record = store
        .insert_expiring_token(actor, name, &hash_token(&token), &scopes, expires_ms)
        .await?;
    Ok((record, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse_with_a_unit_and_a_bound() {
        assert_eq!(parse_lifetime("90d"), Ok(90 * 86_400));
        assert_eq!(parse_lifetime("12h"), Ok(12 * 3600));
        assert_eq!(parse_lifetime("5m"), Ok(300));
        assert_eq!(parse_lifetime("1s"), Ok(1));
        assert_eq!(parse_lifetime("3650d"), Ok(MAX_EXPIRES_IN_SECONDS));
        for bad in [
            "",
            "d",
            "0s",
            "3651d",
            "1.5h",
            "-1d",
            "10",
            "10w",
            "+1d",
            "99999999999999999999d",
        ] {
            assert!(parse_lifetime(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scope_grants_table() {
        use Scope::*;
        let cases = [
            (vec![Read], Read, true),
            (vec![Read], RolloutWrite, false),
            (vec![RolloutWrite], Read, true),
            (vec![RolloutWrite], ReleaseWrite, false),
            (vec![Admin], ReleaseWrite, true),
            (vec![], Read, false),
        ];
        for (held, needed, expected) in cases {
            assert_eq!(grants(&held, needed), expected, "{held:?} needs {needed:?}");
        }
        assert!(Scope::parse("rollout:write").is_ok());
        assert!(Scope::parse("root").is_err());
    }
}
