//! The dashboard's static files, embedded in the binary: the vendored npm packages
//! (`vendor/`, written by `deploy/vendor-ui.sh` at exact versions) and the dashboard's
//! own small script and style sheet. Served with a year-long cache; every link carries
//! the file's content hash (`?v=`), so a new build is fetched anew.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

pub const ASSETS: &[Asset] = &[
    Asset {
        name: "htmx.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("vendor/htmx.min.js"),
    },
    Asset {
        name: "chart.umd.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("vendor/chart.umd.js"),
    },
    Asset {
        name: "chartjs-plugin-annotation.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("vendor/chartjs-plugin-annotation.min.js"),
    },
    Asset {
        name: "pico.classless.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("vendor/pico.classless.min.css"),
    },
    Asset {
        name: "dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/dashboard.js"),
    },
    Asset {
        name: "dashboard.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("assets/dashboard.css"),
    },
];

/// Each asset's URL with its content hash.
static URLS: LazyLock<Vec<(&'static str, String)>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let hash = hex::encode(Sha256::digest(a.bytes));
            (a.name, format!("/ui/assets/{}?v={}", a.name, &hash[..16]))
        })
        .collect()
});

/// The URL of the asset `name` (with its content hash).
pub fn url(name: &str) -> String {
    URLS.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, url)| url.clone())
        .unwrap_or_else(|| format!("/ui/assets/{name}"))
}

pub async fn serve(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            asset.bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
