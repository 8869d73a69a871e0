//! Vehicles: search by opaque id or tag; one vehicle's installed image per ECU, last
//! check-in, deployments and their events.

use super::layout::{bytes, error_page, page, respond, short_digest, when};
use super::session::Session;
use crate::api::extract::{parse_query, ApiQuery};
use crate::api::{deployments, vehicles, AppState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use maud::html;
use serde::Deserialize;

/// Most rollouts whose deployment events one vehicle's page shows.
const MAX_ROLLOUTS_WITH_EVENTS: usize = 10;

#[derive(Debug, Deserialize)]
pub struct Search {
    #[serde(default)]
    id: String,
    #[serde(default)]
    tag: String,
}

pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(search): Query<Search>,
) -> Response {
    let id = search.id.trim();
    if !id.is_empty() {
        // An id names one vehicle: open it (its page says when there is none).
        let encoded: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
        return Redirect::to(&format!("/ui/vehicles/{encoded}")).into_response();
    }
    let tag = search.tag.trim();
    let mut query = "limit=100".to_owned();
    if !tag.is_empty() {
        query.push_str("&tag=");
        query.extend(form_urlencoded::byte_serialize(tag.as_bytes()));
    }
    let result = match parse_query::<vehicles::ListQuery>(&query) {
        Ok(q) => vehicles::list(State(state), session.caller.clone(), ApiQuery(q)).await,
        Err(e) => Err(e),
    };
    let page_of = match result {
        Ok(Json(page)) => page,
        Err(error) => return error_page(Some(&session), &error),
    };
    let body = html! {
        h1 { "Vehicles" }
        form.filters method="get" action="/ui/vehicles" role="search" {
            label for="vehicle-id" { "Vehicle id" }
            input #vehicle-id type="search" name="id" value=(search.id) placeholder="exact id";
            label for="vehicle-tag" { "Tag" }
            input #vehicle-tag type="search" name="tag" value=(search.tag) placeholder="e.g. fleet-eu";
            button type="submit" { "Search" }
        }
        @if page_of.items.is_empty() {
            p { "No vehicle" @if !tag.is_empty() { " with tag " code { (tag) } } "." }
        } @else {
            div.scroll { table #vehicles {
                caption {
                    (page_of.items.len()) " vehicles by id"
                    @if !tag.is_empty() { " with tag " (tag) }
                    @if page_of.next_cursor.is_some() { " (the first 100)" }
                }
                thead { tr {
                    th scope="col" { "Vehicle" } th scope="col" { "Tags" }
                    th scope="col" { "Installed" } th scope="col" { "Last check-in" }
                } }
                tbody {
                    @for v in &page_of.items {
                        tr {
                            th scope="row" { a href={"/ui/vehicles/" (v.id)} { (v.id) } }
                            td { (v.tags.join(", ")) }
                            td {
                                @for (i, ecu) in v.ecus.iter().enumerate() {
                                    @if i > 0 { ", " }
                                    (ecu.ecu) ": " (ecu.installed_version.as_deref().unwrap_or("—"))
                                }
                            }
                            td { (v.last_seen_at.as_deref().map(when).unwrap_or_else(|| "never".to_owned())) }
                        }
                    }
                }
            } }
        }
    };
    respond(StatusCode::OK, page("Vehicles", Some(&session), body))
}

pub async fn detail(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    let detail =
        match vehicles::get_one(State(state.clone()), session.caller.clone(), Path(id)).await {
            Ok(Json(detail)) => detail,
            Err(error) => return error_page(Some(&session), &error),
        };
    let vehicle = &detail.vehicle;
    // Each rollout's deployments of this vehicle with their events, newest rollouts
    // first (the API's per-rollout view).
    let mut rollout_ids: Vec<&str> = Vec::new();
    let mut newest_first = detail.deployments.clone();
    newest_first.sort_by(|a, b| b.assigned_at.cmp(&a.assigned_at));
    for d in &newest_first {
        if !rollout_ids.contains(&d.rollout_id.as_str()) {
            rollout_ids.push(&d.rollout_id);
        }
    }
    rollout_ids.truncate(MAX_ROLLOUTS_WITH_EVENTS);
    let mut histories = Vec::new();
    for rollout in &rollout_ids {
        if let Ok(Json(view)) = deployments::get_one(
            State(state.clone()),
            session.caller.clone(),
            Path(((*rollout).to_owned(), vehicle.id.clone())),
        )
        .await
        {
            histories.push(view);
        }
    }
    let body = html! {
        p { a href="/ui/vehicles" { "← Vehicles" } }
        h1 { "Vehicle " (vehicle.id) }
        dl.facts {
            dt { "Tags" } dd { @if vehicle.tags.is_empty() { "none" } @else { (vehicle.tags.join(", ")) } }
            dt { "Last check-in" } dd #last-checkin { (vehicle.last_seen_at.as_deref().map(when).unwrap_or_else(|| "never".to_owned())) }
            dt { "Agent state" } dd { (vehicle.agent_state.as_deref().unwrap_or("—")) }
            dt { "Director version" } dd { (vehicle.director_version) }
            dt { "Registered" } dd { (when(&vehicle.created_at)) }
            @if let Some(at) = &vehicle.decommissioned_at { dt { "Decommissioned" } dd { (when(at)) } }
        }
        h2 #ecus-heading { "Installed images" }
        div.scroll { table #ecus aria-labelledby="ecus-heading" {
            thead { tr {
                th scope="col" { "ECU" } th scope="col" { "Hardware id" } th scope="col" { "Version" }
                th scope="col" { "Size" } th scope="col" { "SHA-256" }
            } }
            tbody {
                @for ecu in &vehicle.ecus {
                    tr {
                        th scope="row" { (ecu.ecu) } td { (ecu.hardware_id) }
                        td { (ecu.installed_version.as_deref().unwrap_or("not reported")) }
                        td { @if let Some(l) = ecu.installed_length { (bytes(l)) } @else { "—" } }
                        td { @if let Some(d) = &ecu.installed_sha256 { (short_digest(&d.to_hex())) } @else { "—" } }
                    }
                }
            }
        } }
        h2 { "Deployments" }
        @if histories.is_empty() { p.muted { "No deployment yet." } }
        @for view in &histories {
            article {
                header {
                    "Rollout " a href={"/ui/rollouts/" (view.rollout_id)} { code { (view.rollout_id) } }
                }
                @for d in &view.deployments {
                    h3 { "ECU " (d.deployment.ecu) ": " (d.deployment.status.as_str().replace('_', " ")) }
                    p.muted { "Phase " (d.deployment.phase + 1) " · attempts " (d.deployment.attempts) " · assigned " (when(&d.deployment.assigned_at)) }
                    div.scroll { table.events {
                        caption { "Events, oldest first" }
                        thead { tr { th scope="col" { "When" } th scope="col" { "Status" } th scope="col" { "Source" } th scope="col" { "Reason" } } }
                        tbody {
                            @for e in &d.events {
                                tr {
                                    td { (when(&e.at)) } td { (e.status.as_str().replace('_', " ")) }
                                    td { (e.source) } td { (e.reason_code.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    } }
                }
            }
        }
    };
    respond(
        StatusCode::OK,
        page(&format!("Vehicle {}", vehicle.id), Some(&session), body),
    )
}
