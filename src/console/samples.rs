//! The overview's figures: the process's metrics ([`crate::telemetry`]) sampled once a second
//! into a ring of the last minute, so jobs per second and the last minute's Genesys requests
//! and 429s are differences of counters, computed here rather than asked of a Prometheus.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::telemetry::names;

/// How often a sample is taken.
pub const EVERY: Duration = Duration::from_secs(1);
/// How far back the ring reaches: "the last minute".
pub const WINDOW: Duration = Duration::from_secs(60);
/// The span jobs per second are measured over.
pub const RATE_SPAN: Duration = Duration::from_secs(5);

/// One reading of the metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// `genesys_worker_jobs_total` summed by outcome.
    pub jobs: BTreeMap<String, f64>,
    /// `genesys_worker_genesys_requests_total`, every route and status.
    pub requests: f64,
    /// `genesys_worker_genesys_throttled_total`: 429s.
    pub throttled: f64,
    /// `genesys_worker_jobs_in_flight` by lane.
    pub in_flight: BTreeMap<String, f64>,
    /// `genesys_worker_oldest_job_age_seconds`.
    pub oldest_job_age: f64,
    /// `genesys_worker_rate_limit_configured_per_second` and `…_effective_per_second` by
    /// `client` label ("" without a pool).
    pub configured: BTreeMap<String, f64>,
    pub effective: BTreeMap<String, f64>,
}

impl Sample {
    /// Reads the Prometheus text of `render`: the metrics the overview shows, nothing else.
    pub fn parse(render: &str) -> Self {
        let mut sample = Self::default();
        for line in render.lines() {
            let Some((name, labels, value)) = series(line) else {
                continue;
            };
            let label = |key: &str| {
                labels
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            match name {
                names::JOBS => *sample.jobs.entry(label("outcome")).or_default() += value,
                names::GENESYS_REQUESTS => sample.requests += value,
                names::THROTTLED => sample.throttled += value,
                names::JOBS_IN_FLIGHT => *sample.in_flight.entry(label("lane")).or_default() += value,
                names::OLDEST_JOB_AGE => sample.oldest_job_age = value,
                names::RATE_LIMIT_CONFIGURED => {
                    sample.configured.insert(label("client"), value);
                }
                names::RATE_LIMIT_EFFECTIVE => {
                    sample.effective.insert(label("client"), value);
                }
                _ => {}
            }
        }
        sample
    }
}

/// A series' labels, as `(name, value)` pairs.
type Labels = Vec<(String, String)>;

/// One line of the text format: `name{key="value",…} value`; `None` for comments, blank lines
/// and anything that does not parse.
fn series(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        };
        rest = &inner[end + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// The samples of the last minute, oldest first.
#[derive(Debug, Default)]
pub struct Samples {
    ring: Mutex<VecDeque<(Instant, Sample)>>,
}

impl Samples {
    /// Takes a sample of the process's metrics now.
    pub fn take(&self) {
        self.push(Instant::now(), Sample::parse(&crate::telemetry::render()));
    }

    pub fn push(&self, at: Instant, sample: Sample) {
        let mut ring = self.ring.lock().expect("samples lock is never poisoned");
        ring.push_back((at, sample));
        // One sample older than the window stays, as the window's start.
        while ring.len() > 2 && ring.get(1).is_some_and(|(t, _)| at.duration_since(*t) >= WINDOW) {
            ring.pop_front();
        }
    }

    /// What the overview shows, from the latest sample and the ones before it.
    pub fn figures(&self) -> Figures {
        let ring = self.ring.lock().expect("samples lock is never poisoned");
        let Some((now, latest)) = ring.back().cloned() else {
            return Figures::default();
        };
        let back = |span: Duration| {
            ring.iter()
                .find(|(t, _)| now.duration_since(*t) <= span)
                .or(ring.front())
                .cloned()
                .expect("the ring is not empty")
        };
        let (rate_start, rate_from) = back(RATE_SPAN);
        let (minute_start, minute_from) = back(WINDOW);
        let rate_secs = now.duration_since(rate_start).as_secs_f64();
        let per_second = |delta: f64| if rate_secs > 0.0 { delta / rate_secs } else { 0.0 };
        let delta = |from: &BTreeMap<String, f64>, outcome: &str| {
            (latest.jobs.get(outcome).copied().unwrap_or(0.0) - from.get(outcome).copied().unwrap_or(0.0))
                .max(0.0)
        };
        let by_outcome: Vec<OutcomeFigures> = latest
            .jobs
            .keys()
            .map(|outcome| OutcomeFigures {
                outcome: outcome.clone(),
                per_second: round(per_second(delta(&rate_from.jobs, outcome))),
                last_minute: delta(&minute_from.jobs, outcome).round() as u64,
                total: latest.jobs[outcome].round() as u64,
            })
            .collect();
        let in_flight: BTreeMap<String, u64> = ["single", "batch"]
            .into_iter()
            .map(|lane| lane.to_string())
            .chain(latest.in_flight.keys().cloned())
            .map(|lane| {
                let n = latest.in_flight.get(&lane).copied().unwrap_or(0.0).max(0.0);
                (lane, n.round() as u64)
            })
            .collect();
        Figures {
            window_secs: round(now.duration_since(minute_start).as_secs_f64()),
            jobs_per_second: round(by_outcome.iter().map(|o| o.per_second).sum()),
            jobs_last_minute: by_outcome.iter().map(|o| o.last_minute).sum(),
            by_outcome,
            in_flight,
            oldest_job_age_secs: round(latest.oldest_job_age),
            requests_per_second: round(per_second((latest.requests - rate_from.requests).max(0.0))),
            requests_last_minute: (latest.requests - minute_from.requests).max(0.0).round() as u64,
            throttled_last_minute: (latest.throttled - minute_from.throttled).max(0.0).round() as u64,
            configured: latest.configured.clone(),
            effective: latest.effective.clone(),
        }
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Jobs of one outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OutcomeFigures {
    pub outcome: String,
    /// Over the last [`RATE_SPAN`].
    pub per_second: f64,
    pub last_minute: u64,
    /// Since the process started.
    pub total: u64,
}

/// The sampled figures of the overview.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// The span the "last minute" figures cover (less while the worker is younger).
    pub window_secs: f64,
    pub jobs_per_second: f64,
    pub jobs_last_minute: u64,
    pub by_outcome: Vec<OutcomeFigures>,
    pub in_flight: BTreeMap<String, u64>,
    pub oldest_job_age_secs: f64,
    pub requests_per_second: f64,
    pub requests_last_minute: u64,
    pub throttled_last_minute: u64,
    pub configured: BTreeMap<String, f64>,
    pub effective: BTreeMap<String, f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE genesys_worker_jobs_total counter
genesys_worker_jobs_total{kind="agent.status",outcome="applied"} 10
genesys_worker_jobs_total{kind="batch",outcome="applied"} 2
genesys_worker_jobs_total{kind="agent.status",outcome="rejected"} 1
genesys_worker_genesys_requests_total{route="/api/v2/users/{id}/presences/purecloud",status="200"} 7
genesys_worker_genesys_requests_total{client="a",route="/api/v2/users/presences/bulk",status="429"} 1
genesys_worker_genesys_throttled_total{limit="token.rate",family="presence"} 1
genesys_worker_jobs_in_flight{lane="batch"} 3
genesys_worker_oldest_job_age_seconds 1.5
genesys_worker_rate_limit_configured_per_second 4
genesys_worker_rate_limit_effective_per_second{client="a \"b\""} 2.5
genesys_worker_job_duration_seconds_bucket{kind="batch",le="+Inf"} 2
"#;

    #[test]
    fn the_text_format_is_read_for_the_overviews_metrics() {
        let sample = Sample::parse(TEXT);
        assert_eq!(sample.jobs["applied"], 12.0);
        assert_eq!(sample.jobs["rejected"], 1.0);
        assert_eq!(sample.requests, 8.0);
        assert_eq!(sample.throttled, 1.0);
        assert_eq!(sample.in_flight["batch"], 3.0);
        assert_eq!(sample.oldest_job_age, 1.5);
        assert_eq!(sample.configured[""], 4.0);
        assert_eq!(sample.effective["a \"b\""], 2.5);
    }

    #[test]
    fn rates_and_the_last_minute_are_differences_of_samples() {
        let samples = Samples::default();
        let start = Instant::now();
        let at = |secs: u64, applied: f64, requests: f64| {
            let mut sample = Sample::default();
            sample.jobs.insert("applied".into(), applied);
            sample.requests = requests;
            samples.push(start + Duration::from_secs(secs), sample);
        };
        // 70 s of samples: the first 10 fall out of the window.
        for s in 0..=70 {
            at(s, (s * 2) as f64, s as f64);
        }
        let figures = samples.figures();
        assert_eq!(figures.window_secs, 60.0);
        assert_eq!(figures.jobs_per_second, 2.0);
        assert_eq!(figures.jobs_last_minute, 120);
        assert_eq!(figures.requests_per_second, 1.0);
        assert_eq!(figures.requests_last_minute, 60);
        assert_eq!(figures.by_outcome[0].total, 140);
        assert_eq!(figures.in_flight["single"], 0);
    }

    #[test]
    fn one_sample_gives_zero_rates() {
        let samples = Samples::default();
        samples.push(Instant::now(), Sample::parse(TEXT));
        let figures = samples.figures();
        assert_eq!(figures.jobs_per_second, 0.0);
        assert_eq!(figures.jobs_last_minute, 0);
        assert_eq!(figures.window_secs, 0.0);
    }
}
