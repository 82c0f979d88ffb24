//! Group commit (docs/architecture.md, section 3.3): the jobs in flight each make three script
//! calls (claim, commit, finish), and they make them at nearly the same moments, so the calls
//! are coalesced. A call that finds no grouped call in flight goes at once, alone (a single job
//! never waits for company); calls that arrive while one is in flight wait for it and then go
//! together, whatever their kind, as one script call over all of them. Each job keeps its own reply and its own failure: the grouped
//! script runs each job's part under `pcall`, so one job's bad record fails that job only. The
//! whole group is one Lua script, so each job's part stays as atomic as its own script was.
//!
//! In a Redis Cluster a script may touch one slot only, so there every call goes alone.

use std::time::Duration;

use redis::{Script, Value};
use tokio::sync::{mpsc, oneshot};

use super::connection::Connection;
use super::StoreError;

/// The most jobs one grouped call carries: bounds the script's run (Redis serves nothing
/// else meanwhile) and the size of one request.
const MAX_GROUP: usize = 64;

/// One job's part of a grouped call.
struct Part {
    kind: Kind,
    keys: Vec<String>,
    args: Vec<String>,
    reply: oneshot::Sender<Result<Value, StoreError>>,
}

/// The scripts that are grouped: each a script written for one job's `KEYS` and `ARGV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Claim,
    Commit,
    Finish,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Claim, Kind::Commit, Kind::Finish];

    fn name(self) -> &'static str {
        match self {
            Kind::Claim => "CLAIM",
            Kind::Commit => "COMMIT",
            Kind::Finish => "FINISH",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Kind::Claim => super::claim::CLAIM,
            Kind::Commit => super::commit::COMMIT,
            Kind::Finish => super::claim::FINISH,
        }
    }

    /// Whether a write of this kind must be held by `REDIS_WAIT_REPLICAS` replicas before the
    /// job goes on (nothing rides on a finish: a lost one only re-publishes events).
    fn replicated(self) -> bool {
        !matches!(self, Kind::Finish)
    }
}

/// Coalesces the grouped scripts' calls; clones share the queue.
#[derive(Clone)]
pub(crate) struct ScriptGroup {
    parts: mpsc::UnboundedSender<Part>,
}

/// What the grouped script's runner needs besides the calls.
pub(crate) struct Runner {
    pub(crate) conn: Connection,
    /// `REDIS_WAIT_REPLICAS` (0: none) and its timeout: one `WAIT` covers the whole group.
    pub(crate) wait: Option<(u64, Duration)>,
    /// One job per call (Redis Cluster).
    pub(crate) alone: bool,
}

impl ScriptGroup {
    /// Starts the runner.
    pub(crate) fn start(runner: Runner) -> Self {
        let (parts, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(queue, grouped(), runner));
        Self { parts }
    }

    /// Runs script `kind` for one job; returns its reply as the single-job script would.
    pub(crate) async fn call(
        &self,
        kind: Kind,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, StoreError> {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Grouped {
            script: kind.name(),
            cause: "the worker is stopping".into(),
        };
        self.parts
            .send(Part {
                kind,
                keys,
                args,
                reply,
            })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Every grouped script as a function of its own, and a loop over the parts: ARGV[1] is the
/// number of parts; each part then brings its script's name, its number of keys and of
/// arguments, and its arguments (its keys follow each other in KEYS). Each part's reply is
/// `{'ok', reply}` or `{'error', message}`.
fn grouped() -> Script {
    let functions: String = Kind::ALL
        .iter()
        .map(|kind| {
            format!(
                "scripts['{}'] = function(KEYS, ARGV)\n{}\nend\n",
                kind.name(),
                kind.body()
            )
        })
        .collect();
    let sequence_is_newer = super::commit::SEQUENCE_IS_NEWER;
    let log_entry = super::commit::LOG_ENTRY;
    Script::new(&format!(
        r#"
-- Redis's clock, read once for the whole group (the parts run within microseconds).
local clock
local function now_ms()
  if not clock then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
  end
  return clock
end
{sequence_is_newer}
{log_entry}
local scripts = {{}}
{functions}
local out = {{}}
local k, a = 0, 1
for i = 1, tonumber(ARGV[1]) do
  local name, nk, na = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  a = a + 3
  local keys, args = {{}}, {{}}
  for j = 1, nk do keys[j] = KEYS[k + j] end
  for j = 1, na do args[j] = ARGV[a + j] end
  k, a = k + nk, a + na
  local ok, reply = pcall(scripts[name], keys, args)
  if ok then
    out[i] = {{'ok', reply}}
  else
    out[i] = {{'error', tostring(reply)}}
  end
end
return out
"#
    ))
}

async fn run(mut queue: mpsc::UnboundedReceiver<Part>, script: Script, runner: Runner) {
    let max = if runner.alone { 1 } else { MAX_GROUP };
    while let Some(first) = queue.recv().await {
        let mut parts = vec![first];
        while parts.len() < max {
            match queue.try_recv() {
                Ok(part) => parts.push(part),
                Err(_) => break,
            }
        }
        let mut invocation = script.prepare_invoke();
        invocation.arg(parts.len());
        for part in &parts {
            invocation
                .arg(part.kind.name())
                .arg(part.keys.len())
                .arg(part.args.len());
            for key in &part.keys {
                invocation.key(key);
            }
            for arg in &part.args {
                invocation.arg(arg);
            }
        }
        let replies: Result<Vec<Value>, _> = invocation.invoke_async(&mut runner.conn.clone()).await;
        let must_wait = parts.iter().any(|part| part.kind.replicated());
        let replicated = match (&replies, runner.wait) {
            (Ok(_), Some((replicas, timeout))) if must_wait => runner
                .conn
                .ensure_replicated(Some(&parts[0].keys[0]), replicas, timeout)
                .await
                .map_err(|error| match error {
                    StoreError::NotReplicated { cause, .. } => cause,
                    other => other.to_string(),
                }),
            _ => Ok(()),
        };
        match replies {
            Ok(replies) if replies.len() == parts.len() => {
                for (part, reply) in parts.into_iter().zip(replies) {
                    let answer = match &replicated {
                        Err(cause) if part.kind.replicated() => Err(StoreError::NotReplicated {
                            key: part.keys[0].clone(),
                            cause: cause.clone(),
                        }),
                        _ => unwrap(part.kind.name(), &part.keys[0], reply),
                    };
                    let _ = part.reply.send(answer);
                }
            }
            Ok(replies) => {
                let cause = format!("{} replies for {} calls", replies.len(), parts.len());
                fail(parts, &cause);
            }
            Err(error) => fail(parts, &error.to_string()),
        }
    }
}

fn fail(parts: Vec<Part>, cause: &str) {
    for part in parts {
        let _ = part.reply.send(Err(StoreError::Grouped {
            script: part.kind.name(),
            cause: cause.to_string(),
        }));
    }
}

/// One job's `{'ok', reply}` or `{'error', message}`.
fn unwrap(script: &'static str, key: &str, reply: Value) -> Result<Value, StoreError> {
    let corrupt = |problem: String| StoreError::Corrupt {
        key: key.to_string(),
        problem,
    };
    let Value::Array(mut pair) = reply else {
        return Err(corrupt(format!("{script}: unexpected reply {reply:?}")));
    };
    let payload = if pair.len() == 2 { pair.pop() } else { None };
    let status = pair
        .pop()
        .and_then(|status| redis::from_redis_value::<String>(&status).ok());
    match (status.as_deref(), payload) {
        (Some("ok"), Some(reply)) => Ok(reply),
        (Some("error"), Some(message)) => Err(StoreError::Script {
            script,
            key: key.to_string(),
            message: redis::from_redis_value::<String>(&message).unwrap_or_default(),
        }),
        _ => Err(corrupt(format!("{script}: unexpected reply shape"))),
    }
}
