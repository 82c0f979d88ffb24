//! The console's pages, rendered on the server with maud (every value interpolated is escaped);
//! `console.js` keeps them live by polling the JSON API, writing with `textContent` only.
//!
//! Elements the browser tests use carry a `data-testid`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;
use uuid::Uuid;

use super::{recent, BatchView, Console, JobLookup, JobQuery, LetterQuery, Overview};
use crate::control::Control;

const STYLE: &str = include_str!("console.css");
const SCRIPT: &str = include_str!("console.js");

/// Where a page sits in the navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Nav {
    Overview,
    Batches,
    DeadLetters,
    Jobs,
}

/// A page with the console's frame: navigation, login, the place for messages.
fn frame(console: &Console, title: &str, nav: Nav, page: &str, main: Markup) -> Response {
    let writable = console.writable();
    let link = |href: &str, label: &str, this: Nav| {
        html! { a href=(href) class=[(nav == this).then_some("active")] { (label) } }
    };
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · genesys-worker" }
                style { (PreEscaped(STYLE)) }
                script src="/console/console.js" defer {}
            }
            body data-page=(page) data-writable=(if writable { "true" } else { "false" }) {
                header.top {
                    a.brand href="/console" { "genesys-worker" }
                    nav {
                        (link("/console", "Overview", Nav::Overview))
                        (link("/console/batches", "Batches", Nav::Batches))
                        (link("/console/dead-letters", "Dead letters", Nav::DeadLetters))
                        (link("/console/jobs", "Job lookup", Nav::Jobs))
                    }
                    div.session data-testid="session" {
                        @if writable {
                            form #login-form data-testid="login-form" autocomplete="off" {
                                input #login-actor data-testid="login-actor" name="actor" placeholder="your name" required maxlength="256";
                                input #login-token data-testid="login-token" name="token" type="password" placeholder="admin token" required;
                                button type="submit" data-testid="login-submit" { "Log in" }
                                span #login-error .error data-testid="login-error" role="alert" {}
                            }
                            div #logged-in hidden data-testid="logged-in" {
                                "Signed in as " strong #actor-name data-testid="actor-name" {}
                                " "
                                button #logout type="button" .link data-testid="logout" { "Log out" }
                            }
                        } @else {
                            span.note data-testid="read-only-note" {
                                "Read-only: ADMIN_TOKEN is not set on this worker"
                            }
                        }
                    }
                }
                main {
                    div #flash role="status" data-testid="flash" hidden {}
                    (main)
                }
                footer {
                    "Updated " span #updated data-testid="updated" { (short_time(&super::now_rfc3339())) }
                    " · reads are open on ADMIN_ADDR, changes need the admin token"
                }
            }
        }
    };
    page_response(StatusCode::OK, markup)
}

fn page_response(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup).into_response();
    let headers = response.headers_mut();
    // Scripts only from this server (no inline script, no eval); styles inline (the page's own).
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What a button needing the token looks like: disabled until the script sees a login.
fn needs_login_note(console: &Console) -> Markup {
    html! {
        @if console.writable() {
            p.note.needs-login data-testid="needs-login" { "Log in (top right) to make changes." }
        } @else {
            p.note data-testid="read-only" {
                "This worker has no ADMIN_TOKEN: the console only shows. Set ADMIN_TOKEN to pause, resume, cancel and replay from here."
            }
        }
    }
}

fn secs(value: f64) -> String {
    if value < 60.0 {
        format!("{value:.1} s")
    } else {
        format!("{:.0} min {:.0} s", (value / 60.0).floor(), value % 60.0)
    }
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// An RFC 3339 UTC time to the second: `2026-11-22 08:00:03 UTC`.
fn short_time(at: &str) -> String {
    match at.get(..19) {
        Some(start) if at.as_bytes().get(10) == Some(&b'T') => format!("{} UTC", start.replacen('T', " ", 1)),
        _ => at.to_string(),
    }
}

/// A job id to its first 8 characters (the whole id in the link and its title).
fn short_id(id: &str) -> String {
    match id.get(..8) {
        Some(start) if id.len() > 8 => format!("{start}…"),
        _ => id.to_string(),
    }
}

fn control_target(control: &Control) -> String {
    format!("{} {}", control.scope, control.value)
}

pub async fn overview(State(console): State<Arc<Console>>) -> Response {
    let data = console.overview().await;
    frame(
        &console,
        "Overview",
        Nav::Overview,
        "overview",
        overview_body(&console, &data),
    )
}

fn overview_body(console: &Console, data: &Overview) -> Markup {
    let lane = |name: &str| data.in_flight.lanes.get(name).copied().unwrap_or(0);
    html! {
        h1 { "Overview" }
        section.cards {
            div.card {
                h2 { "Jobs finished" }
                p.big { span #jobs-per-second data-testid="jobs-per-second" { (number(data.jobs.per_second)) } small { " /s" } }
                p { span #jobs-last-minute data-testid="jobs-last-minute" { (data.jobs.last_minute) } " in the last minute" }
            }
            div.card {
                h2 { "In flight" }
                p.big { span #in-flight-total data-testid="in-flight-total" { (data.in_flight.total) } }
                p { "single " span #in-flight-single data-testid="in-flight-single" { (lane("single")) }
                    " · batch " span #in-flight-batch data-testid="in-flight-batch" { (lane("batch")) } }
                p { "oldest " span #oldest-job-age data-testid="oldest-job-age" { (secs(data.oldest_job_age_secs)) } }
            }
            div.card {
                h2 { "Genesys" }
                p.big { span #genesys-rps data-testid="genesys-rps" { (number(data.genesys.requests_per_second)) } small { " requests/s" } }
                p { span #genesys-requests data-testid="genesys-requests" { (data.genesys.requests_last_minute) } " requests, "
                    span #genesys-throttled data-testid="genesys-throttled" { (data.genesys.throttled_last_minute) } " × 429 in the last minute" }
            }
            div.card {
                h2 { "Worker" }
                p.big { span #consuming data-testid="consuming" class=(if data.consuming { "ok" } else { "bad" }) {
                    (if data.consuming { "consuming" } else { "not consuming" }) } }
                p { span #controls-count data-testid="controls-count" { (data.controls.len()) } " control(s) in force" }
            }
        }
        section {
            h2 { "Jobs by outcome" }
            table #outcomes data-testid="outcomes" {
                thead { tr { th { "outcome" } th.num { "per second" } th.num { "last minute" } th.num { "since start" } } }
                tbody {
                    @for o in &data.jobs.by_outcome {
                        tr data-outcome=(o.outcome) {
                            td { span class={"outcome " (o.outcome)} { (o.outcome) } }
                            td.num { (number(o.per_second)) }
                            td.num { (o.last_minute) }
                            td.num { (o.total) }
                        }
                    }
                }
            }
            p.empty #no-outcomes hidden[!data.jobs.by_outcome.is_empty()] { "No job has finished yet." }
        }
        section {
            h2 { "Genesys budget" }
            table #budgets data-testid="budgets" {
                thead { tr { th { "OAuth client" } th.num { "configured /s" } th.num { "allowed now /s" } th.num { "waiting" } th { "paused by a 429" } } }
                tbody {
                    @for b in &data.genesys.budgets {
                        tr {
                            td { code { (b.client) } }
                            td.num { (b.configured_per_second.map(number).unwrap_or_else(|| "–".into())) }
                            td.num { (number(b.effective_per_second)) }
                            td.num { (b.waiting) }
                            td { (b.paused_for_secs.map(secs).unwrap_or_else(|| "no".into())) }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Controls in force" }
            p.note.stale #controls-stale hidden[!data.controls_stale] { "Redis does not answer: these are the controls this worker last read." }
            (controls_table(&data.controls))
            h3 { "Pause" }
            form #pause-form .inline data-testid="pause-form" {
                select #pause-scope data-testid="pause-scope" name="scope" {
                    option value="lane" { "lane" }
                    option value="kind" { "kind" }
                    option value="batch" { "batch" }
                    option value="correlation" { "correlation id" }
                }
                input #pause-value data-testid="pause-value" name="value" placeholder="batch, single, agent.status, an id…" required;
                input #pause-reason data-testid="pause-reason" name="reason" placeholder="reason (optional)";
                button.mutating type="submit" data-testid="pause-submit" disabled { "Pause" }
            }
            (needs_login_note(console))
        }
    }
}

fn controls_table(controls: &[Control]) -> Markup {
    html! {
        table #controls data-testid="controls" {
            thead { tr { th { "action" } th { "target" } th { "by" } th { "since" } th { "reason" } th {} } }
            tbody {
                @for c in controls {
                    tr data-testid="control-row" data-action=(c.action.as_str()) data-scope=(c.scope) data-value=(c.value) {
                        td { span class={"pill " (c.action.as_str())} { (c.action.as_str()) } }
                        td { (control_target(c)) }
                        td { (c.actor) }
                        td title=(c.at) { (short_time(&c.at)) }
                        td { (c.reason.as_deref().unwrap_or("")) }
                        td {
                            @if c.action.as_str() == "pause" {
                                button.mutating type="button" data-testid="resume-control" data-action="resume"
                                    data-scope=(c.scope) data-value=(c.value) disabled { "Resume" }
                            }
                        }
                    }
                }
            }
        }
        p.empty #no-controls data-testid="no-controls" hidden[!controls.is_empty()] { "Nothing is paused or cancelled." }
    }
}

fn progress_bar(batch: &BatchView, testid: &str) -> Markup {
    html! {
        div.bar data-testid=(testid) role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow=(batch.percent) {
            span.fill style={"width: " (batch.percent) "%"} {}
        }
    }
}

fn progress_text(batch: &BatchView) -> String {
    format!(
        "{} of {} children final ({}%)",
        batch.progress.finished, batch.progress.total, batch.percent
    )
}

fn counts_text(batch: &BatchView) -> String {
    batch
        .progress
        .counts
        .iter()
        .map(|(outcome, n)| format!("{outcome} {n}"))
        .collect::<Vec<_>>()
        .join(" · ")
}

fn batch_state(batch: &BatchView) -> String {
    match (&batch.cancelled, &batch.paused) {
        (Some(c), _) => format!("cancelled by {} at {}", c.actor, short_time(&c.at)),
        (None, Some(p)) => format!("paused by {} at {}", p.actor, short_time(&p.at)),
        (None, None) => batch.status.to_string(),
    }
}

pub async fn batches(State(console): State<Arc<Console>>) -> Response {
    let body = match console.batches().await {
        Ok(batches) => html! {
            h1 { "Batches" }
            table #batches data-testid="batches" {
                thead { tr { th { "batch" } th.wide { "progress" } th { "outcomes" } th { "state" } } }
                tbody {
                    @for b in &batches {
                        tr data-testid="batch-row" data-batch=(b.progress.batch_id) {
                            td { a href={"/console/batches/" (b.progress.batch_id)} { code { (b.progress.batch_id) } } }
                            td { (progress_bar(b, "batch-row-bar")) small { (progress_text(b)) } }
                            td { (counts_text(b)) }
                            td { (batch_state(b)) }
                        }
                    }
                }
            }
            p.empty #no-batches hidden[!batches.is_empty()] { "No batch has started lately." }
        },
        Err(err) => unavailable(&err.to_string()),
    };
    frame(&console, "Batches", Nav::Batches, "batches", body)
}

pub async fn batch(State(console): State<Arc<Console>>, Path(id): Path<String>) -> Response {
    let title = "Batch";
    let Ok(id) = Uuid::parse_str(&id) else {
        return not_found(&console, "A batch is named by its job id, a UUID.");
    };
    let body = match console.batch(id).await {
        Ok(Some(b)) => batch_body(&console, &b),
        Ok(None) => {
            return not_found(
                &console,
                &format!("No batch {id}: never started, or its progress expired."),
            )
        }
        Err(err) => unavailable(&err.to_string()),
    };
    frame(&console, title, Nav::Batches, "batch", body)
}

fn batch_body(console: &Console, b: &BatchView) -> Markup {
    let id = b.progress.batch_id.to_string();
    html! {
        h1 { "Batch " code data-testid="batch-id" { (id) } }
        div #batch data-batch=(id) {
            (progress_bar(b, "batch-progress-bar"))
            p.big #batch-progress-text data-testid="batch-progress-text" { (progress_text(b)) }
            dl.facts {
                dt { "published" } dd #batch-published data-testid="batch-published" { (b.progress.published) " of " (b.progress.total) }
                dt { "summary" } dd #batch-summary data-testid="batch-summary" {
                    (if b.progress.summary_sent { "announced" } else { "pending" }) }
                dt { "state" } dd #batch-state data-testid="batch-state" { (batch_state(b)) }
                dt { "reason" } dd #batch-reason-shown data-testid="batch-control-reason" {
                    (b.cancelled.as_ref().or(b.paused.as_ref()).and_then(|c| c.reason.as_deref()).unwrap_or("–")) }
            }
            div.actions {
                input #batch-reason data-testid="batch-reason" placeholder="reason (optional)";
                button.mutating type="button" data-testid="batch-pause" data-action="pause" data-scope="batch" data-value=(id)
                    hidden[b.paused.is_some() || b.cancelled.is_some()] disabled { "Pause" }
                button.mutating type="button" data-testid="batch-resume" data-action="resume" data-scope="batch" data-value=(id)
                    hidden[b.paused.is_none()] disabled { "Resume" }
                button.mutating.danger type="button" data-testid="batch-cancel" data-action="cancel" data-scope="batch" data-value=(id)
                    data-confirm="Cancel every child of this batch that has not run yet? This cannot be undone."
                    hidden[b.cancelled.is_some()] disabled { "Cancel" }
            }
            (needs_login_note(console))
            div.columns {
                section {
                    h2 { "Outcomes" }
                    table #batch-counts data-testid="batch-counts" {
                        thead { tr { th { "outcome" } th.num { "children" } } }
                        tbody {
                            @for (outcome, n) in &b.progress.counts {
                                tr data-testid={"count-" (outcome)} {
                                    td { span class={"outcome " (outcome)} { (outcome) } }
                                    td.num { (n) }
                                }
                            }
                        }
                    }
                }
                section {
                    h2 { "First errors" }
                    table #batch-errors data-testid="batch-errors" {
                        thead { tr { th.num { "#" } th { "job" } th { "outcome" } th { "code" } th { "message" } } }
                        tbody {
                            @for e in &b.progress.first_errors {
                                @let text = |name: &str| e.get(name).map(|v| match v { Value::String(s) => s.clone(), other => other.to_string() }).unwrap_or_default();
                                tr {
                                    td.num { (text("index")) }
                                    td { a href={"/console/jobs?q=" (text("job_id"))} title=(text("job_id")) { code { (short_id(&text("job_id"))) } } }
                                    td { span class={"outcome " (text("outcome"))} { (text("outcome")) } }
                                    td { code { (text("code")) } }
                                    td { (text("message")) }
                                }
                            }
                        }
                    }
                    p.empty #no-errors hidden[!b.progress.first_errors.is_empty()] { "No error so far." }
                    p { a href={"/console/dead-letters?batch=" (id)} { "This batch's dead letters" } }
                }
            }
        }
    }
}

pub async fn dead_letters(State(console): State<Arc<Console>>, Query(query): Query<LetterQuery>) -> Response {
    let listed = console.dead_letters(&query).await;
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let body = html! {
        h1 { "Dead letters" }
        form.inline #dlq-filter data-testid="dlq-filter" method="get" {
            input name="kind" data-testid="dlq-kind" placeholder="kind" value=(value(&query.kind));
            input name="code" data-testid="dlq-code" placeholder="error code" value=(value(&query.code));
            input name="batch" data-testid="dlq-batch" placeholder="batch id" value=(value(&query.batch));
            button type="submit" data-testid="dlq-apply" { "Filter" }
            a href="/console/dead-letters" { "clear" }
        }
        @match &listed {
            Ok(listed) => {
                p #dlq-count data-testid="dlq-count" data-matched=(listed.matched) data-total=(listed.total) {
                    (listed.matched) " of " (listed.total) " dead letter(s) match"
                    @if listed.letters.len() < listed.matched { " (the first " (listed.letters.len()) " shown)" }
                }
                table #dlq-table data-testid="dlq-table" {
                    thead { tr {
                        th { input type="checkbox" #dlq-select-all data-testid="dlq-select-all" aria-label="select all"; }
                        th { "job" } th { "kind" } th { "code" } th { "message" } th.num { "attempts" } th { "first seen" } th { "batch" }
                    } }
                    tbody {
                        @for letter in &listed.letters {
                            tr data-testid="dlq-row" data-job=[letter.job_id.as_deref()] data-code=(letter.code) {
                                td { input type="checkbox" .dlq-select data-testid="dlq-select" value=[letter.job_id.as_deref()]
                                    disabled[letter.job_id.is_none()] aria-label="select"; }
                                td { @if let Some(job) = &letter.job_id { a href={"/console/jobs?q=" (job)} title=(job) { code { (short_id(job)) } } } @else { "(none)" } }
                                td { (letter.kind.as_deref().unwrap_or("?")) }
                                td { code { (letter.code) } }
                                td.message { (letter.message.as_deref().unwrap_or("")) }
                                td.num { (letter.attempts) }
                                td.nowrap { (letter.first_seen.as_deref().map(short_time).unwrap_or_default()) }
                                td { @if let Some(batch) = &letter.batch_id { a href={"/console/batches/" (batch)} title=(batch) { code { (short_id(batch)) } } } }
                            }
                        }
                    }
                }
                p.empty hidden[!listed.letters.is_empty()] { "No dead letter matches." }
            }
            Err(err) => { (unavailable(&err.to_string())) }
        }
        div.actions #dlq-actions data-kind=(value(&query.kind)) data-code=(value(&query.code)) data-batch=(value(&query.batch)) {
            label { input type="checkbox" #dlq-dry-run data-testid="dlq-dry-run" checked; " dry run (change nothing, show what would go)" }
            button.mutating type="button" #dlq-replay-selected data-testid="dlq-replay-selected" disabled { "Replay selected" }
            button.mutating type="button" #dlq-replay-all data-testid="dlq-replay-all" disabled { "Replay all that match" }
        }
        (needs_login_note(&console))
        div #dlq-result data-testid="dlq-result" {}
        p.note { "A replay re-publishes each letter where it was first published; idempotency makes a replay of a job already applied harmless. The list is read anew on each load (it is not polled)." }
    };
    frame(&console, "Dead letters", Nav::DeadLetters, "dead-letters", body)
}

pub async fn jobs(State(console): State<Arc<Console>>, Query(query): Query<JobQuery>) -> Response {
    let found = if query.q.trim().is_empty() {
        None
    } else {
        Some(console.lookup(&query).await)
    };
    let body = html! {
        h1 { "Job lookup" }
        form.inline #job-search data-testid="job-search" method="get" {
            input name="q" #job-q data-testid="job-q" placeholder="idempotency key or job id" value=(query.q) size="48";
            input name="entity" data-testid="job-entity" placeholder=(if console.store.records_keyed_by_entity() { "entity (required: Redis Cluster)" } else { "entity (optional)" })
                value=(query.entity.clone().unwrap_or_default());
            button type="submit" data-testid="job-submit" { "Look up" }
        }
        p.note data-testid="job-lookup-note" {
            "By idempotency key: the records Redis keeps (applied jobs, for IDEMPOTENCY_TTL_SECS, and jobs in progress). "
            "By job id: only the jobs this replica ran lately (the last " (recent::MAX_ENTRIES) " since it started); ask the other replicas' consoles, or use the key."
        }
        @match found {
            None => {}
            Some(Err(err)) => { (unavailable(&err.to_string())) }
            Some(Ok(found)) => { (job_body(&found)) }
        }
    };
    frame(&console, "Job lookup", Nav::Jobs, "jobs", body)
}

fn job_body(found: &JobLookup) -> Markup {
    let outcome = found
        .record
        .as_ref()
        .and_then(|r| r.outcome.clone())
        .or_else(|| found.recent.as_ref().and_then(|r| r.outcome.clone()));
    let dash = |v: Option<&str>| v.unwrap_or("–").to_string();
    html! {
        section #job-result data-testid="job-result" data-found=(if found.found { "true" } else { "false" }) {
            @for note in &found.notes { p.note data-testid="job-note" { (note) } }
            @if found.found {
                dl.facts {
                    dt { "found by" } dd data-testid="job-by" { (dash(found.by)) }
                    dt { "job id" } dd data-testid="job-id" { code { (dash(found.job_id.as_deref())) } }
                    dt { "idempotency key" } dd data-testid="job-key" { code { (dash(found.idempotency_key.as_deref())) } }
                    dt { "entity" } dd data-testid="job-entity-value" { code { (dash(found.entity.as_deref())) } }
                    dt { "outcome" } dd data-testid="job-outcome" { @if let Some(o) = &outcome { span class={"outcome " (o)} { (o) } } @else { "–" } }
                    dt { "record" } dd data-testid="job-state" {
                        @if let Some(r) = &found.record { (r.state) (if r.confirmed { ", events confirmed" } else { ", events not confirmed yet" }) } @else { "none in Redis" }
                    }
                    dt { "entity version now" } dd data-testid="job-entity-version" {
                        @if let Some(v) = &found.entity_version {
                            "v" (v["version"]) " " code.small { (v["checksum"].as_str().unwrap_or("")) }
                        } @else { "–" }
                    }
                    @if let Some(r) = &found.recent { dt { "seen here" } dd data-testid="job-seen" { (r.seen) } }
                }
                @if let Some(r) = &found.record {
                    h2 { "Events" }
                    @for e in &r.events {
                        article.event data-testid="job-event" {
                            h3 { code { (e.routing_key) } " on " code { (e.exchange) } }
                            pre { (serde_json::to_string_pretty(&e.body).unwrap_or_default()) }
                        }
                    }
                }
            }
        }
    }
}

fn unavailable(message: &str) -> Markup {
    html! { p.error data-testid="unavailable" role="alert" { "Cannot read this now: " (message) } }
}

fn not_found(console: &Console, message: &str) -> Response {
    let mut response = frame(
        console,
        "Not found",
        Nav::Batches,
        "not-found",
        html! { h1 { "Not found" } p data-testid="not-found" { (message) } },
    );
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

pub async fn script() -> Response {
    let mut response = SCRIPT.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
