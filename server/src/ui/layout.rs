//! The page frame every dashboard page shares, and small formatting helpers.

use super::assets;
use super::session::{Session, CSRF_FIELD};
use crate::api::error::ApiError;
use crate::tokens::Scope;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

/// A whole page: head (vendored CSS and scripts only), navigation, `body` as the main
/// content.
pub fn page(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // htmx's own indicator styles would be an inline style sheet, which the
                // Content-Security-Policy refuses.
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false}"#;
                title { (title) " · OTA dashboard" }
                link rel="stylesheet" href=(assets::url("pico.classless.min.css"));
                link rel="stylesheet" href=(assets::url("dashboard.css"));
                script defer src=(assets::url("htmx.min.js")) {}
                script defer src=(assets::url("chart.umd.js")) {}
                script defer src=(assets::url("chartjs-plugin-annotation.min.js")) {}
                script defer src=(assets::url("dashboard.js")) {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Main" {
                        ul { li { strong { "OTA dashboard" } } }
                        @if let Some(session) = session {
                            ul {
                                li { a href="/ui/rollouts" { "Rollouts" } }
                                li { a href="/ui/releases" { "Releases and images" } }
                                li { a href="/ui/vehicles" { "Vehicles" } }
                                li {
                                    span.who {
                                        "Signed in as " strong { (session.caller.token_name) }
                                        " (" (scopes(session)) ")"
                                    }
                                }
                                li {
                                    form.inline method="post" action="/ui/logout" {
                                        input type="hidden" name=(CSRF_FIELD) value=(session.csrf);
                                        button.secondary type="submit" { "Sign out" }
                                    }
                                }
                            }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

fn scopes(session: &Session) -> String {
    session
        .caller
        .scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The HTML response of a page.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

/// An API error shown as a page: its status, title and detail.
pub fn error_page(session: Option<&Session>, error: &ApiError) -> Response {
    let problem = error.problem();
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    respond(
        status,
        page(
            problem.title,
            session,
            html! {
                h1 { (problem.title) }
                p role="alert" { (problem.detail) }
                p { a href="/ui/rollouts" { "Back to the rollouts" } }
            },
        ),
    )
}

/// A refused form (CSRF or origin) as a page: 403.
pub fn refused_page(session: Option<&Session>, why: &super::session::Refused) -> Response {
    respond(
        StatusCode::FORBIDDEN,
        page(
            "Refused",
            session,
            html! {
                h1 { "Refused" }
                p role="alert" { (why.to_string()) }
                p { a href="/ui/rollouts" { "Back to the rollouts" } }
            },
        ),
    )
}

/// A note where a section needs a scope the session does not hold.
pub fn needs_scope(scope: Scope) -> Markup {
    html! { p.muted { "This needs a token with the " code { (scope.as_str()) } " scope." } }
}

/// Bytes for people: `12.3 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A timestamp for people: `2026-11-30 15:35:24 UTC` from RFC 3339.
pub fn when(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| rfc3339.to_owned())
}

/// The first 12 hex digits of a digest, with the whole one as a tooltip.
pub fn short_digest(hex: &str) -> Markup {
    html! { code title=(hex) { (hex.get(..12).unwrap_or(hex)) "…" } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(16 * 1024), "16.0 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 + 512 * 1024), "5.5 MiB");
    }
}
