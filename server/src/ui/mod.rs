//! The dashboard: `/ui`, server-rendered HTML for release engineers, a transport beside
//! [`crate::api`]. It makes no store queries of its own: every page calls the API's own
//! handlers in process (the same validation, scopes, read model and response types, so
//! what the dashboard shows is what `GET /api/v1/...` answers), and every action goes
//! through the same handler, hence [`crate::engine::Engine::change_rollout`].
//!
//! Layout:
//! - [`session`]: sign-in with an API token (HTTP-only, `SameSite=Strict` cookie), the
//!   per-session CSRF token and the origin check of every POST;
//! - [`assets`]: the vendored htmx, Chart.js (+ annotation plugin) and Pico CSS, and
//!   the dashboard's own script and style sheet, embedded and served with a long cache;
//! - [`layout`]: the page frame, error pages, formatting;
//! - `rollouts`, `releases`, `vehicles`: the pages.
//!
//! Pages are plain HTML forms and links (they work without JavaScript); htmx refreshes
//! a rollout's live section, and Chart.js draws its failure-ratio plot.

pub mod assets;
pub mod layout;
mod releases;
mod rollouts;
pub mod session;
mod vehicles;

use crate::api::extract::live_token;
use crate::api::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use axum_extra::extract::cookie::CookieJar;
use maud::html;
use serde::Deserialize;
use session::Session;

/// The dashboard's routes (not part of the API's route table or OpenAPI document).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(home))
        .route("/ui/", get(home))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/assets/{name}", get(assets::serve))
        .route("/ui/rollouts", get(rollouts::list))
        .route("/ui/rollouts/{id}", get(rollouts::detail))
        .route("/ui/rollouts/{id}/live", get(rollouts::live))
        .route("/ui/rollouts/{id}/confirm/{action}", get(rollouts::confirm))
        .route("/ui/rollouts/{id}/{action}", post(rollouts::act))
        .route("/ui/releases", get(releases::list))
        .route("/ui/vehicles", get(vehicles::list))
        .route("/ui/vehicles/{id}", get(vehicles::detail))
        .layer(axum::middleware::from_fn(security_headers))
}

/// What the browser may do with a dashboard page: scripts and styles from this server
/// only (no inline script), no framing, forms posting here only; pages are not cached
/// (they hold live data), assets say their own cache.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let defaults = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in defaults {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    response
}

async fn home() -> Redirect {
    Redirect::to("/ui/rollouts")
}

fn login_form(error: Option<&str>) -> maud::Markup {
    layout::page(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            p { "Sign in with an API token (" code { "ota-server tokens create" } "). Its scopes decide what you can do here." }
            @if let Some(error) = error {
                p.error role="alert" #login-error { (error) }
            }
            form method="post" action="/ui/login" {
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="off" required
                    aria-describedby=[error.map(|_| "login-error")];
                button type="submit" { "Sign in" }
            }
        },
    )
}

async fn login_page() -> Response {
    layout::respond(StatusCode::OK, login_form(None))
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: CookieJar,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Err(why) = session::check_origin(&headers) {
        return layout::refused_page(None, &why);
    }
    let token = form.token.trim().to_owned();
    match live_token(&state, &token).await {
        Ok(_) => {
            let secure = state.public_url.starts_with("https://");
            (
                jar.add(session::session_cookie(token, secure)),
                Redirect::to("/ui/rollouts"),
            )
                .into_response()
        }
        Err(error) => {
            let problem = error.problem();
            let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::UNAUTHORIZED);
            let message = if status == StatusCode::UNAUTHORIZED {
                format!("That token was not accepted: {}.", problem.detail)
            } else {
                problem.detail
            };
            layout::respond(status, login_form(Some(&message)))
        }
    }
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    session: Session,
    headers: HeaderMap,
    jar: CookieJar,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(why) = session.check_form(&headers, &form.csrf) {
        return layout::refused_page(Some(&session), &why);
    }
    (
        jar.remove(session::removal_cookie()),
        Redirect::to("/ui/login"),
    )
        .into_response()
}
