//! Signing in to the dashboard and protecting its forms.
//!
//! - The session is the API token itself, in an HTTP-only, `SameSite=Strict` cookie
//!   scoped to `/ui`: a page's script cannot read it, and no other site's page can make
//!   the browser send it. Every request checks it as the API checks a bearer token
//!   ([`live_token`]): revoked or expired, the session ends.
//! - Every state-changing form carries a CSRF token derived from the session
//!   ([`csrf_token`], a keyed hash of the session token: unguessable without the
//!   cookie, the same on every replica, nothing stored), and every POST must come from
//!   this origin ([`same_origin`], on `Origin`, else `Referer`).

use crate::api::error::ApiError;
use crate::api::extract::{live_token, Caller};
use crate::api::AppState;
use crate::tokens::{grants, Scope};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub const COOKIE: &str = "ota_ui_session";
/// Where the session cookie is sent: the dashboard only, never the API.
pub const COOKIE_PATH: &str = "/ui";
/// The form field of the CSRF token.
pub const CSRF_FIELD: &str = "csrf";

/// The CSRF token of a session: hex SHA-256 over a fixed context and the session token.
pub fn csrf_token(session_token: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"ota-ui-csrf-v1\0");
    hash.update(session_token.as_bytes());
    hex::encode(hash.finalize())
}

/// Compares two tokens in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether a state-changing request comes from this server's own pages: its `Origin`
/// (else its `Referer`) names the host the request was sent to. A request with neither
/// is refused: browsers send `Origin` with every form POST.
pub fn same_origin(origin: Option<&str>, referer: Option<&str>, host: Option<&str>) -> bool {
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return false;
    };
    let authority_of = |url: &str| -> Option<String> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))?;
        Some(rest.split(['/', '?', '#']).next().unwrap_or("").to_owned())
    };
    match (origin, referer) {
        (Some(origin), _) if origin != "null" => {
            authority_of(origin).is_some_and(|a| a.eq_ignore_ascii_case(host))
        }
        (Some(_), _) => false,
        (None, Some(referer)) => {
            authority_of(referer).is_some_and(|a| a.eq_ignore_ascii_case(host))
        }
        (None, None) => false,
    }
}

/// A signed-in dashboard user: the API caller their token makes, and their CSRF token.
#[derive(Debug, Clone)]
pub struct Session {
    pub caller: Caller,
    pub csrf: String,
}

impl Session {
    pub fn can(&self, scope: Scope) -> bool {
        grants(&self.caller.scopes, scope)
    }

    /// Checks a state-changing request: same origin, and the form's CSRF token is this
    /// session's.
    pub fn check_form(&self, headers: &HeaderMap, form_csrf: &str) -> Result<(), Refused> {
        check_origin(headers)?;
        if same_secret(&self.csrf, form_csrf) {
            Ok(())
        } else {
            Err(Refused::Csrf)
        }
    }
}

/// Checks the origin of a POST (sign-in included).
pub fn check_origin(headers: &HeaderMap) -> Result<(), Refused> {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if same_origin(
        text(header::ORIGIN),
        text(header::REFERER),
        text(header::HOST),
    ) {
        Ok(())
    } else {
        Err(Refused::CrossOrigin)
    }
}

/// Why a dashboard form was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the form did not come from this dashboard (Origin check failed)")]
    CrossOrigin,
    #[error(
        "the form's CSRF token is missing or not this session's; reload the page and try again"
    )]
    Csrf,
}

/// Where an unauthenticated dashboard request is sent: the sign-in page. A live-refresh
/// request from htmx is told to send the whole page there (`HX-Redirect`).
#[derive(Debug)]
pub struct SignInFirst {
    htmx: bool,
}

impl IntoResponse for SignInFirst {
    fn into_response(self) -> Response {
        if self.htmx {
            (StatusCode::UNAUTHORIZED, [("HX-Redirect", "/ui/login")]).into_response()
        } else {
            Redirect::to("/ui/login").into_response()
        }
    }
}

/// The session a request's cookie holds, if it is a live token's.
pub async fn session_of(parts: &Parts, state: &AppState) -> Result<Session, ApiError> {
    let jar = CookieJar::from_headers(&parts.headers);
    let token = jar
        .get(COOKIE)
        .map(|c| c.value().to_owned())
        .ok_or(ApiError::Unauthorized)?;
    let record = live_token(state, &token).await?;
    Ok(Session {
        caller: Caller::from_record(record, parts),
        csrf: csrf_token(&token),
    })
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match session_of(parts, state).await {
            Ok(session) => Ok(session),
            Err(ApiError::Unauthorized | ApiError::TokenExpired { .. }) => Err(SignInFirst {
                htmx: parts.headers.contains_key("HX-Request"),
            }
            .into_response()),
            Err(other) => Err(other.into_response()),
        }
    }
}

/// The session cookie for `token`. `secure` when the server is reached over HTTPS.
pub fn session_cookie(token: String, secure: bool) -> Cookie<'static> {
    Cookie::build((COOKIE, token))
        .path(COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .build()
}

/// The cookie that ends the session.
pub fn removal_cookie() -> Cookie<'static> {
    Cookie::build((COOKIE, "")).path(COOKIE_PATH).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_hosts_origin_may_post() {
        let host = Some("127.0.0.1:8080");
        let cases = [
            (Some("http://127.0.0.1:8080"), None, true),
            (Some("https://127.0.0.1:8080"), None, true),
            (Some("http://evil.example"), None, false),
            (Some("http://127.0.0.1:8080.evil.example"), None, false),
            (Some("null"), Some("http://127.0.0.1:8080/ui"), false),
            (None, Some("http://127.0.0.1:8080/ui/rollouts"), true),
            (None, Some("http://evil.example/ui"), false),
            (None, None, false),
        ];
        for (origin, referer, expected) in cases {
            assert_eq!(
                same_origin(origin, referer, host),
                expected,
                "origin {origin:?}, referer {referer:?}"
            );
        }
        assert!(!same_origin(Some("http://127.0.0.1:8080"), None, None));
    }

    #[test]
    fn the_csrf_token_is_the_sessions_own() {
        let token = csrf_token("ota_aaaa");
        assert_eq!(token.len(), 64);
        assert_ne!(token, csrf_token("ota_aaab"));
        assert!(same_secret(&token, &csrf_token("ota_aaaa")));
        assert!(!same_secret(&token, ""));
        assert!(!same_secret(&token, &csrf_token("ota_aaab")));
    }
}
