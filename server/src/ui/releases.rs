//! Releases and images: versions, hardware ids, `security_version`, sizes, and the
//! deltas built between images with their size against the full image.

use super::layout::{bytes, error_page, page, respond, short_digest, when};
use super::session::Session;
use crate::api::extract::{parse_query, ApiQuery};
use crate::api::{images, releases, rollouts, AppState};
use crate::store::{DeltaJobStatus, ImageRecord};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use maud::html;
use std::collections::BTreeMap;

/// How many of each list the page shows (the newest).
const SHOWN: &str = "limit=100&order=desc";

pub async fn list(State(state): State<AppState>, session: Session) -> Response {
    let caller = || session.caller.clone();
    let releases = match parse_query::<releases::ListQuery>(SHOWN) {
        Ok(q) => releases::list(State(state.clone()), caller(), ApiQuery(q)).await,
        Err(e) => Err(e),
    };
    let images = match parse_query::<images::ListQuery>(SHOWN) {
        Ok(q) => images::list(State(state.clone()), caller(), ApiQuery(q)).await,
        Err(e) => Err(e),
    };
    let jobs = match parse_query::<rollouts::JobsQuery>(SHOWN) {
        Ok(q) => rollouts::delta_jobs(State(state.clone()), caller(), ApiQuery(q)).await,
        Err(e) => Err(e),
    };
    let (Json(releases), Json(images), Json(jobs)) = match (releases, images, jobs) {
        (Ok(r), Ok(i), Ok(j)) => (r, i, j),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return error_page(Some(&session), &e),
    };
    let by_digest: BTreeMap<&str, &ImageRecord> = images
        .items
        .iter()
        .map(|i| (i.sha256.as_str(), i))
        .collect();
    let version_of = |sha: &str| {
        by_digest
            .get(sha)
            .map(|i| i.version.clone())
            .unwrap_or_else(|| format!("{}…", sha.get(..12).unwrap_or(sha)))
    };
    let body = html! {
        h1 { "Releases and images" }
        section aria-labelledby="releases-heading" {
            h2 #releases-heading { "Releases" }
            @if releases.items.is_empty() { p.muted { "No release yet." } }
            @for release in &releases.items {
                article #(release.id) {
                    header {
                        strong { (release.name) " " (release.version) }
                        " · " code { (release.id) }
                    }
                    dl.facts {
                        dt { "Security version" } dd { (release.security_version) }
                        dt { "Targets version" } dd { (release.targets_version) }
                        dt { "Signed by" } dd { (release.signed_by) }
                        dt { "Created" } dd { (when(&release.created_at)) }
                    }
                    div.scroll { table {
                        caption { "Images of " (release.name) " " (release.version) }
                        thead { tr {
                            th scope="col" { "Hardware id" } th scope="col" { "Image" }
                            th scope="col" { "Version" } th scope="col" { "Size" } th scope="col" { "SHA-256" }
                        } }
                        tbody {
                            @for image in &release.images {
                                tr {
                                    th scope="row" { (image.hardware_id) }
                                    td { (image.name) } td { (image.version) }
                                    td { (bytes(image.length)) }
                                    td { (short_digest(&image.sha256.to_hex())) }
                                }
                            }
                        }
                    } }
                }
            }
        }
        section aria-labelledby="images-heading" {
            h2 #images-heading { "Images" }
            div.scroll { table #images {
                caption { (images.items.len()) " images, newest first" }
                thead { tr {
                    th scope="col" { "Image" } th scope="col" { "Hardware id" } th scope="col" { "Version" }
                    th scope="col" { "Size" } th scope="col" { "SHA-256" } th scope="col" { "Uploaded" }
                } }
                tbody {
                    @for image in &images.items {
                        tr {
                            th scope="row" { (image.name) } td { (image.hardware_id) } td { (image.version) }
                            td { (bytes(image.length)) } td { (short_digest(&image.sha256)) }
                            td { (when(&image.created_at)) }
                        }
                    }
                }
            } }
        }
        section aria-labelledby="deltas-heading" {
            h2 #deltas-heading { "Deltas" }
            @if jobs.items.is_empty() { p.muted { "No delta built yet (starting a rollout builds them)." } }
            @else {
                div.scroll { table #deltas {
                    caption { "Delta builds, newest first: the delta's size against the full target image" }
                    thead { tr {
                        th scope="col" { "Hardware id" } th scope="col" { "From → to" }
                        th scope="col" { "Status" } th scope="col" { "Delta" }
                        th scope="col" { "Full image" } th scope="col" { "Delta / full" }
                    } }
                    tbody {
                        @for job in &jobs.items {
                            @let full = by_digest.get(job.target_sha256.as_str()).map(|i| i.length);
                            tr {
                                th scope="row" { (job.hardware_id) }
                                td { (version_of(&job.source_sha256)) " → " (version_of(&job.target_sha256)) }
                                td { (job.status.as_str()) @if job.status == DeltaJobStatus::Failed { @if let Some(e) = &job.error { " (" (e) ")" } } }
                                td { @if let Some(l) = job.delta_length { (bytes(l)) } @else { "—" } }
                                td { @if let Some(f) = full { (bytes(f)) } @else { "—" } }
                                td {
                                    @if let (Some(l), Some(f)) = (job.delta_length, full) {
                                        @if f > 0 { (format!("{:.1} %", l as f64 * 100.0 / f as f64)) } @else { "—" }
                                    } @else { "—" }
                                }
                            }
                        }
                    }
                } }
            }
        }
    };
    respond(
        StatusCode::OK,
        page("Releases and images", Some(&session), body),
    )
}
