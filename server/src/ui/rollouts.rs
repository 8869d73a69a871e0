//! Rollout pages: the list (filter by state), one rollout (phases live, failure-ratio
//! plot, cohort sizes, delta savings, actions with a confirmation, audit trail).

use super::layout::{self, bytes, error_page, needs_scope, page, respond, when};
use super::session::{Session, CSRF_FIELD};
use crate::api::error::ApiError;
use crate::api::extract::{parse_query, ApiQuery};
use crate::api::{audit, deployments, rollouts, AppState};
use crate::breaker::BreakerState;
use crate::engine::history::RolloutHistory;
use crate::engine::plan::allowed_actions;
use crate::engine::RolloutStatus;
use crate::rollout::{RolloutAction, RolloutState};
use crate::store::{PhaseCounts, RolloutRecord};
use crate::tokens::Scope;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use maud::{html, Markup};
use serde::Deserialize;

/// The actions the dashboard offers, in the order of its buttons.
const ACTIONS: [RolloutAction; 4] = [
    RolloutAction::Pause,
    RolloutAction::Resume,
    RolloutAction::Abort,
    RolloutAction::Rollback,
];

/// How often a rollout's live section refreshes while the rollout can still change.
const REFRESH: &str = "every 2s";

fn action_of(text: &str) -> Option<RolloutAction> {
    ACTIONS.into_iter().find(|a| a.as_str() == text)
}

fn action_title(action: RolloutAction) -> &'static str {
    match action {
        RolloutAction::Pause => "Pause",
        RolloutAction::Resume => "Resume",
        RolloutAction::Abort => "Abort",
        RolloutAction::Rollback => "Roll back",
        RolloutAction::Start => "Start",
        RolloutAction::Complete => "Complete",
    }
}

fn action_meaning(action: RolloutAction) -> &'static str {
    match action {
        RolloutAction::Pause => "No new vehicles are assigned; deployments under way finish.",
        RolloutAction::Resume => {
            "New vehicles are assigned again; an open breaker half-opens and a probe batch decides."
        }
        RolloutAction::Abort => {
            "Vehicles not yet installing are cancelled. The rollout cannot be resumed."
        }
        RolloutAction::Rollback => {
            "Updated vehicles are told to return to their previous image. The rollout cannot be resumed."
        }
        RolloutAction::Start | RolloutAction::Complete => "",
    }
}

fn state_badge(state: RolloutState) -> Markup {
    html! { span class={"badge state-" (state.as_str())} { (state.as_str().replace('_', " ")) } }
}

fn breaker_badge(state: BreakerState) -> Markup {
    html! { span class={"badge breaker-" (state.as_str())} { (state.as_str().replace('_', " ")) } }
}

fn phase_text(record: &RolloutRecord) -> String {
    let phases = record.spec.phases.len();
    match record.spec.phases.get(record.current_phase) {
        Some(phase) => format!(
            "{} of {phases}: {} ({} %)",
            record.current_phase + 1,
            phase.name,
            phase.percent
        ),
        None => format!("{} of {phases}", record.current_phase + 1),
    }
}

fn progress(totals: &PhaseCounts, label: &str) -> Markup {
    let total = totals.total();
    html! {
        progress value=(totals.committed) max=(total.max(1)) aria-label=(label) {}
        small { (totals.committed) " of " (total) " committed" }
    }
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    #[serde(default)]
    state: String,
}

const STATES: [RolloutState; 6] = [
    RolloutState::Draft,
    RolloutState::Running,
    RolloutState::Paused,
    RolloutState::Aborted,
    RolloutState::Completed,
    RolloutState::RolledBack,
];

pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(params): Query<ListParams>,
) -> Response {
    let filter = STATES
        .into_iter()
        .find(|s| s.as_str() == params.state)
        .map(|s| format!("&state={}", s.as_str()))
        .unwrap_or_default();
    let query = match parse_query::<rollouts::ListQuery>(&format!("limit=100&order=desc{filter}")) {
        Ok(query) => query,
        Err(error) => return error_page(Some(&session), &error),
    };
    let page_of = match rollouts::list(
        State(state.clone()),
        session.caller.clone(),
        ApiQuery(query),
    )
    .await
    {
        Ok(Json(page)) => page,
        Err(error) => return error_page(Some(&session), &error),
    };
    let mut rows = Vec::new();
    for record in page_of.items {
        let totals = state
            .engine
            .rollout_totals(&record.id)
            .await
            .unwrap_or_default();
        rows.push((record, totals));
    }
    let body = html! {
        h1 { "Rollouts" }
        form.filters method="get" action="/ui/rollouts" {
            label for="state" { "State" }
            select #state name="state" {
                option value="" selected[params.state.is_empty()] { "any" }
                @for s in STATES {
                    option value=(s.as_str()) selected[params.state == s.as_str()] { (s.as_str().replace('_', " ")) }
                }
            }
            button type="submit" { "Filter" }
        }
        @if rows.is_empty() {
            p { "No rollouts" @if !params.state.is_empty() { " in this state" } "." }
        } @else {
            table #rollouts {
                caption { (rows.len()) " rollouts, newest first" }
                thead { tr {
                    th scope="col" { "Rollout" } th scope="col" { "State" }
                    th scope="col" { "Release" } th scope="col" { "Phase" }
                    th scope="col" { "Breaker" } th scope="col" { "Progress" }
                } }
                tbody {
                    @for (record, totals) in &rows {
                        tr data-rollout=(record.id) {
                            th scope="row" { a href={"/ui/rollouts/" (record.id)} { (record.name) } }
                            td { (state_badge(record.state)) }
                            td { a href={"/ui/releases#" (record.release_id)} { code { (record.release_id) } } }
                            td { (phase_text(record)) }
                            td { (breaker_badge(record.breaker_state)) }
                            td { (progress(totals, &format!("Progress of {}", record.name))) }
                        }
                    }
                }
            }
        }
    };
    respond(StatusCode::OK, page("Rollouts", Some(&session), body))
}

/// The status, history and (for admins) audit trail of one rollout, through the API's
/// handlers.
async fn read(
    state: &AppState,
    session: &Session,
    id: &str,
) -> Result<(RolloutStatus, RolloutHistory), ApiError> {
    let Json(status) = rollouts::status(
        State(state.clone()),
        session.caller.clone(),
        Path(id.to_owned()),
    )
    .await?;
    let Json(history) = rollouts::history(
        State(state.clone()),
        session.caller.clone(),
        Path(id.to_owned()),
    )
    .await?;
    Ok((status, history))
}

/// The part of a rollout's page that refreshes itself: state, phases, cohorts, delta
/// savings and the plot's data.
fn live_section(status: &RolloutStatus, history: &RolloutHistory) -> Markup {
    let record = &status.rollout;
    let terminal = matches!(
        record.state,
        RolloutState::Aborted | RolloutState::Completed | RolloutState::RolledBack
    );
    let history_json = serde_json::to_string(history).unwrap_or_else(|_| "{}".to_owned());
    let savings = &status.delta_savings;
    html! {
        section #live
            hx-get={"/ui/rollouts/" (record.id) "/live"}
            hx-trigger=[(!terminal).then_some(REFRESH)]
            hx-swap="outerHTML"
            aria-live="polite" aria-busy="false" {
            dl.facts {
                dt { "State" } dd #rollout-state { (state_badge(record.state)) }
                dt { "Phase" } dd { (phase_text(record)) }
                dt { "Breaker" } dd #breaker-state {
                    (breaker_badge(record.breaker_state))
                    @if let Some(reason) = &record.breaker_reason { " " span.muted { (reason) } }
                }
                dt { "Progress" } dd { (progress(&status.totals, "Progress of the rollout")) }
            }
            h2 #phases-heading { "Phases" }
            div.scroll {
                table #phases aria-labelledby="phases-heading" {
                    thead { tr {
                        th scope="col" { "Phase" }
                        th scope="col" { abbr title="Share of the fleet the phase reaches, cumulative" { "Band" } }
                        th scope="col" { abbr title="Vehicles in the phase's cohort band the director would assign" { "Cohort" } }
                        th scope="col" { "Assigned" } th scope="col" { "Downloading" }
                        th scope="col" { abbr title="Installed, waiting for the vehicle's commit" { "Installing" } }
                        th scope="col" { "Committed" } th scope="col" { "Failed" }
                        th scope="col" { "Rolled back" } th scope="col" { "Cancelled" }
                    } }
                    tbody {
                        @for phase in &status.phases {
                            tr.current[phase.active] {
                                th scope="row" {
                                    (phase.index + 1) ". " (phase.name)
                                    @if phase.active { " " span.badge { "current" } }
                                }
                                td { (phase.percent) " %" }
                                td { (phase.eligible) }
                                td { (phase.counts.assigned) } td { (phase.counts.downloading) }
                                td { (phase.counts.installed) } td { (phase.counts.committed) }
                                td { (phase.counts.failed) } td { (phase.counts.rolled_back) }
                                td { (phase.counts.cancelled) }
                            }
                        }
                    }
                    tfoot { tr {
                        th scope="row" { "All phases" }
                        td {}
                        td { (status.phases.iter().map(|p| p.eligible).sum::<u64>()) }
                        td { (status.totals.assigned) } td { (status.totals.downloading) }
                        td { (status.totals.installed) } td { (status.totals.committed) }
                        td { (status.totals.failed) } td { (status.totals.rolled_back) }
                        td { (status.totals.cancelled) }
                    } }
                }
            }
            h2 { "Deltas" }
            dl.facts #delta-savings {
                dt { "Deployments that downloaded a delta" } dd { (savings.deployments) }
                dt { "Full images would have been" } dd { (bytes(savings.full_bytes)) }
                dt { "Deltas downloaded" } dd { (bytes(savings.delta_bytes)) }
                dt { "Bytes saved by deltas" } dd #bytes-saved { (bytes(savings.bytes_saved)) }
                dt { "Delta builds" } dd {
                    @if status.delta_jobs.is_empty() { "none" }
                    @for (job_status, n) in &status.delta_jobs { (n) " " (job_status) " " }
                }
            }
            div #history-data hidden data-history=(history_json) {}
        }
    }
}

fn plot_caption(history: &RolloutHistory) -> Markup {
    let last = history.points.last();
    html! {
        "Failure ratio (" (failure_kind(history)) " among finished deployments, in the breaker's window) over time, against the breaker threshold of "
        (history.threshold_percentage) " % (opens after at least " (history.min_number_of_executed_things) " finished). "
        @if let Some(last) = last {
            "Latest: " (format!("{:.1}", last.failure_percent)) " % of " (last.executed) ". "
        } @else { "No deployment has finished yet. " }
        @if !history.marks.is_empty() {
            "Breaker transitions: "
            @for (i, mark) in history.marks.iter().enumerate() {
                @if i > 0 { "; " }
                (mark_label(mark)) " at " (when(&mark.at))
            }
            "."
        }
    }
}

fn failure_kind(history: &RolloutHistory) -> &'static str {
    use crate::rollout::FailureType;
    match history.failure_type {
        FailureType::All => "failed, rolled back and timed-out deployments",
        FailureType::Failed => "failed deployments",
        FailureType::RolledBack => "rolled-back deployments",
        FailureType::TimedOut => "timed-out deployments",
    }
}

fn mark_label(mark: &crate::engine::history::BreakerMark) -> String {
    match (mark.action.as_str(), mark.to) {
        ("rollout.start", _) => "started".to_owned(),
        ("rollout.resume", _) => "resumed".to_owned(),
        (_, Some(to)) => format!("breaker {}", to.as_str().replace('_', " ")),
        (_, None) => mark.action.clone(),
    }
}

pub async fn detail(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    let (status, history) = match read(&state, &session, &id).await {
        Ok(read) => read,
        Err(error) => return error_page(Some(&session), &error),
    };
    let record = &status.rollout;
    let audit = if session.can(Scope::Admin) {
        let query = parse_query::<audit::AuditQuery>(&format!("limit=50&target={}", record.id));
        match query {
            Ok(query) => audit::list(
                State(state.clone()),
                session.caller.clone(),
                ApiQuery(query),
            )
            .await
            .map(|Json(page)| page.items)
            .ok(),
            Err(_) => None,
        }
    } else {
        None
    };
    let deployments = match parse_query::<deployments::ListDeployments>("limit=50") {
        Ok(query) => deployments::list(
            State(state.clone()),
            session.caller.clone(),
            Path(record.id.clone()),
            ApiQuery(query),
        )
        .await
        .map(|Json(page)| page.items)
        .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let allowed = allowed_actions(record);
    let offered: Vec<RolloutAction> = ACTIONS
        .into_iter()
        .filter(|a| allowed.contains(a))
        .collect();
    let body = html! {
        p { a href="/ui/rollouts" { "← All rollouts" } }
        h1 { "Rollout " (record.name) }
        p.muted {
            code { (record.id) } " · release " a href={"/ui/releases#" (record.release_id)} { code { (record.release_id) } }
            " · created " (when(&record.created_at))
        }
        section aria-labelledby="actions-heading" {
            h2 #actions-heading { "Actions" }
            @if !session.can(Scope::RolloutWrite) {
                (needs_scope(Scope::RolloutWrite))
            } @else if offered.is_empty() {
                p.muted { "No action applies to a " (record.state.as_str().replace('_', " ")) " rollout." }
            } @else {
                div.actions {
                    @for action in &offered {
                        a role="button" class={"action action-" (action.as_str())}
                            href={"/ui/rollouts/" (record.id) "/confirm/" (action.as_str())} {
                            (action_title(*action)) "…"
                        }
                    }
                }
            }
        }
        (live_section(&status, &history))
        section aria-labelledby="plot-heading" {
            h2 #plot-heading { "Failure ratio" }
            figure {
                div.plot {
                    canvas #failure-plot role="img" aria-describedby="plot-caption" {
                        "The failure-ratio plot needs JavaScript; its figures are in the caption."
                    }
                }
                figcaption #plot-caption { (plot_caption(&history)) }
            }
        }
        section aria-labelledby="deployments-heading" {
            h2 #deployments-heading { "Deployments" }
            @if deployments.is_empty() {
                p.muted { "No vehicle assigned yet." }
            } @else {
                div.scroll {
                    table #deployments {
                        caption { "The first " (deployments.len()) " by vehicle id" }
                        thead { tr {
                            th scope="col" { "Vehicle" } th scope="col" { "ECU" } th scope="col" { "Phase" }
                            th scope="col" { "Status" } th scope="col" { "Attempts" } th scope="col" { "Updated" }
                        } }
                        tbody {
                            @for d in &deployments {
                                tr {
                                    th scope="row" { a href={"/ui/vehicles/" (d.vehicle_id)} { (d.vehicle_id) } }
                                    td { (d.ecu) } td { (d.phase + 1) }
                                    td { (d.status.as_str().replace('_', " ")) @if let Some(r) = &d.reason_code { " (" (r) ")" } }
                                    td { (d.attempts) } td { (when(&d.updated_at)) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="audit-heading" {
            h2 #audit-heading { "Audit trail" }
            @match &audit {
                None => { (needs_scope(Scope::Admin)) }
                Some(entries) if entries.is_empty() => { p.muted { "Nothing audited yet." } }
                Some(entries) => { div.scroll { table #audit {
                    caption { "Newest first" }
                    thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Action" } th scope="col" { "Detail" } } }
                    tbody {
                        @for entry in entries {
                            tr {
                                td { (when(&entry.at)) } td { (entry.actor) }
                                td { code { (entry.action) } }
                                td { code.detail { (entry.detail.to_string()) } }
                            }
                        }
                    }
                } } }
            }
        }
    };
    respond(
        StatusCode::OK,
        page(&format!("Rollout {}", record.name), Some(&session), body),
    )
}

/// The live section alone, for htmx's refresh.
pub async fn live(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    match read(&state, &session, &id).await {
        Ok((status, history)) => respond(StatusCode::OK, live_section(&status, &history)),
        Err(error) => {
            let problem = error.problem();
            let status =
                StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, problem.detail).into_response()
        }
    }
}

fn unknown_action(session: &Session, action: &str) -> Response {
    error_page(
        Some(session),
        &ApiError::NotFound {
            entity: "dashboard action",
            id: action.to_owned(),
        },
    )
}

/// The confirmation of an action: what it does, and the form that does it.
pub async fn confirm(
    State(state): State<AppState>,
    session: Session,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let Some(action) = action_of(&action) else {
        return unknown_action(&session, &action);
    };
    if let Err(error) = session.caller.require(Scope::RolloutWrite) {
        return error_page(Some(&session), &error);
    }
    let record = match rollouts::get_one(State(state), session.caller.clone(), Path(id)).await {
        Ok(Json(record)) => record,
        Err(error) => return error_page(Some(&session), &error),
    };
    let title = action_title(action);
    let body = html! {
        h1 { (title) " rollout " (record.name) "?" }
        p { "The rollout is " (state_badge(record.state)) ", phase " (phase_text(&record)) "." }
        p { (action_meaning(action)) }
        form method="post" action={"/ui/rollouts/" (record.id) "/" (action.as_str())} {
            input type="hidden" name=(CSRF_FIELD) value=(session.csrf);
            div.actions {
                button type="submit" #confirm class={"action-" (action.as_str())} { (title) " rollout" }
                a role="button" class="secondary" href={"/ui/rollouts/" (record.id)} { "Cancel" }
            }
        }
    };
    respond(
        StatusCode::OK,
        page(&format!("{title} rollout"), Some(&session), body),
    )
}

#[derive(Debug, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
}

/// An action, after its confirmation: the origin and CSRF checks, then the API's own
/// handler (hence `Engine::change_rollout`), then back to the rollout.
pub async fn act(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Err(why) = session.check_form(&headers, &form.csrf) {
        return layout::refused_page(Some(&session), &why);
    }
    let Some(action) = action_of(&action) else {
        return unknown_action(&session, &action);
    };
    match rollouts::act(state, session.caller.clone(), id, action).await {
        Ok(Json(record)) => Redirect::to(&format!("/ui/rollouts/{}", record.id)).into_response(),
        Err(error) => error_page(Some(&session), &error),
    }
}
