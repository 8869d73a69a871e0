//! The HTTP client behind `otactl`: one method per API operation, problem+json errors
//! turned into readable messages.

use anyhow::{bail, Context};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// A failed API call, with the server's problem details.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {detail}")]
pub struct ApiFailure {
    pub status: StatusCode,
    pub detail: String,
    pub problem: Option<Value>,
}

impl ApiClient {
    pub fn new(base: &str, token: &str) -> anyhow::Result<ApiClient> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("otactl/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http,
        })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .context("calling the OTA server")?;
        let status = response.status();
        let bytes = response.bytes().await.context("reading the response")?;
        if !status.is_success() {
            let problem: Option<Value> = serde_json::from_slice(&bytes).ok();
            let mut detail = problem
                .as_ref()
                .and_then(|p| p["detail"].as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            if detail.is_empty() {
                detail = status.canonical_reason().unwrap_or("error").to_owned();
            }
            return Err(ApiFailure {
                status,
                detail,
                problem,
            }
            .into());
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing the server's answer ({} bytes)", bytes.len()))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(
            self.http
                .request(Method::POST, format!("{}{path}", self.base))
                .json(body),
        )
        .await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(
            self.http
                .request(Method::PUT, format!("{}{path}", self.base))
                .json(body),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post_empty(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.base)))
            .await
    }

    /// Streams a file as an image upload (never loads it into memory).
    pub async fn upload_image(
        &self,
        file: &Path,
        hardware_id: &str,
        version: &str,
        name: Option<&str>,
    ) -> anyhow::Result<Value> {
        let handle = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("opening {}", file.display()))?;
        let length = handle.metadata().await?.len();
        if length == 0 {
            bail!("{} is empty", file.display());
        }
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(handle));
        let mut query = vec![("hardware_id", hardware_id), ("version", version)];
        if let Some(name) = name {
            query.push(("name", name));
        }
        let request = self
            .http
            .post(format!("{}/api/v1/images", self.base))
            .query(&query)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(body);
        self.send(request).await
    }
}
