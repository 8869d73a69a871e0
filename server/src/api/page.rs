//! Cursor pagination: a list answers `{items, next_cursor}`, `next_cursor` being `null`
//! on the last page. A cursor is opaque to clients: base64url of a JSON array holding the
//! list's kind and the sort key of the last item returned, so it is stable while rows
//! are added and a cursor of another list is refused. A cursor that does not decode is
//! a 400 naming the `cursor` parameter.

use super::error::ApiError;
use crate::store::Keyset;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Serialize;

/// One page of a list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` when this is the last one.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// Longest cursor accepted, in characters.
pub const MAX_CURSOR_LEN: usize = 1024;

/// A cursor for list `kind` positioned after the item with sort key `key`.
pub fn encode(kind: &str, key: &[String]) -> String {
    let mut parts = vec![kind.to_owned()];
    parts.extend(key.iter().cloned());
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&parts).unwrap_or_default())
}

/// The 400 answer to a cursor this list did not make.
pub fn refused(cursor: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "cursor: expected a next_cursor this list returned, got {}",
        super::validate::shown(cursor)
    ))
}

/// The sort key a cursor of list `kind` holds (`N` parts), or 400 naming `cursor`.
pub fn decode<const N: usize>(kind: &str, cursor: &str) -> Result<[String; N], ApiError> {
    let refused = || refused(cursor);
    if cursor.len() > MAX_CURSOR_LEN {
        return Err(refused());
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| refused())?;
    let parts: Vec<String> = serde_json::from_slice(&bytes).map_err(|_| refused())?;
    match parts.split_first() {
        Some((k, key)) if k == kind && key.len() == N => {
            key.to_vec().try_into().map_err(|_| refused())
        }
        _ => Err(refused()),
    }
}

/// A page from `rows` fetched with `limit + 1`: the extra row only says there is more.
pub fn page<T>(
    mut rows: Vec<T>,
    limit: i64,
    kind: &str,
    key: impl Fn(&T) -> Vec<String>,
) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = if more {
        rows.last().map(|last| encode(kind, &key(last)))
    } else {
        None
    };
    Page {
        items: rows,
        next_cursor,
    }
}

/// Whether `order` (`asc`, the default, or `desc`) asks for descending order; 422
/// naming `order` for anything else.
pub fn descending(order: Option<&str>) -> Result<bool, ApiError> {
    match order {
        None | Some("asc") => Ok(false),
        Some("desc") => Ok(true),
        Some(other) => Err(ApiError::invalid(
            "order",
            "asc or desc",
            super::validate::shown(other),
        )),
    }
}

/// A time a cursor holds (RFC 3339, as the list shows it) in ms; an empty text is a
/// time never set (-1, sorting before every real one).
pub fn time_key(cursor: &str, time: &str) -> Result<i64, ApiError> {
    if time.is_empty() {
        return Ok(-1);
    }
    chrono::DateTime::parse_from_rfc3339(time)
        .map(|t| t.timestamp_millis())
        .map_err(|_| refused(cursor))
}

/// The position and direction of a page of a list sorted by creation time, then id:
/// `order` is `asc` (oldest first, the default) or `desc`; the cursor holds the last
/// row's `created_at` and id, and names the list and the direction it was made for.
pub fn created_keyset(
    list: &str,
    order: Option<&str>,
    cursor: Option<&str>,
    limit: i64,
) -> Result<(Keyset, String), ApiError> {
    let descending = descending(order)?;
    let kind = format!("{list}:{}", if descending { "desc" } else { "asc" });
    let after = match cursor {
        None => None,
        Some(cursor) => {
            let [created_at, id] = decode::<2>(&kind, cursor)?;
            Some((time_key(cursor, &created_at)?, id))
        }
    };
    Ok((
        Keyset {
            after,
            descending,
            limit: limit + 1,
        },
        kind,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        let key = ["veh-1".to_owned(), "main".to_owned()];
        let cursor = encode("deployments", &key);
        assert_eq!(decode::<2>("deployments", &cursor).unwrap(), key);
        for bad in [
            "",
            "not base64!",
            &encode("rollouts", &key),
            &encode("deployments", &key[..1]),
            &URL_SAFE_NO_PAD.encode(b"{}"),
            &"A".repeat(2000),
        ] {
            let err = decode::<2>("deployments", bad).unwrap_err();
            assert!(err.to_string().starts_with("cursor: "), "{bad}: {err}");
        }
    }

    #[test]
    fn a_page_has_a_cursor_only_when_more_rows_exist() {
        let p = page(vec![1, 2, 3], 2, "n", |n| vec![n.to_string()]);
        assert_eq!(p.items, vec![1, 2]);
        assert_eq!(
            decode::<1>("n", p.next_cursor.as_deref().unwrap()).unwrap(),
            ["2".to_owned()]
        );
        let p = page(vec![1, 2], 2, "n", |n| vec![n.to_string()]);
        assert_eq!((p.items.len(), p.next_cursor), (2, None));
    }
}
