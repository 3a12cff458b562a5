//! `mlmesh call`: instructions from the shell, replies as JSON.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use mlmesh::protocol::tracking;
use mlmesh::protocol::Topic;
use mlmesh::{Ack, CallOptions, Code, NodeId, Status};

use super::io::{stdin_is_terminal, stdin_lines, Out};
use super::json::{json_to_msgpack, msgpack_to_json, write_str};
use super::session::Session;
use super::{exit_code, json_help, parse_duration, Failure, Global};

/// The default wait for discovery.
const WAIT: Duration = Duration::from_millis(1500);

/// The `tracking/1` instructions that must go to the tracker holding their `run`.
const RUN_SCOPED: [&str; 4] = [
    tracking::RUN_GET,
    tracking::RUN_END,
    tracking::RUN_LOG,
    tracking::METRIC_HISTORY,
];

/// Send an instruction and print the reply's payload as JSON.
#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Without JSON, every line of stdin is one call, and the replies are printed in order,\n",
    "one a line (with stdin a terminal or empty, one call with {}). The first failed call stops the\n",
    "command with its status on stderr and as the exit status (see `mlmesh --help`);\n",
    "with --keep-going it prints {\"error\":{\"code\":..,\"message\":..,\"field\":..}} instead and\n",
    "goes on. A call that nobody answers never exits 0.\n\n",
    "The command waits (at most --wait) for a provider of TOPIC to be discovered. Calls\n",
    "naming a run (tracking.run.get, .end, .log, tracking.metric.history) go to the tracker\n",
    "that holds it, found by broadcasting tracking.run.get when the mesh has several.\n",
    "sys.ping and sys.describe are answered by every node: name one with --to.\n\n",
    "Examples:\n",
    "  mlmesh call tracking.run.get '{\"run\":\"0190f3c27c1a70008000000000000001\"}'\n",
    "  mlmesh call tracking.run.search '{\"filter\":\"metrics.rmse < 0.5\"}' --all\n",
    "  mlmesh call sys.ping --to tracker\n",
    "  jq -c '{name: .}' models.json | mlmesh call registry.model.create\n\n",
    json_help!()
))]
pub(crate) struct CallArgs {
    /// The instruction's topic, e.g. `tracking.run.get`.
    #[arg(value_name = "TOPIC")]
    topic: String,
    /// The payload as JSON; without it, one call for every line of stdin.
    #[arg(value_name = "JSON")]
    json: Option<String>,
    /// Send to this node only: a name, an id, or an id prefix.
    #[arg(long, value_name = "NODE")]
    to: Option<String>,
    /// Send to every provider and print one line for each:
    /// {"node":..,"name":..,"ok":<reply>} or {"node":..,"name":..,"error":{..}}; exits 0
    /// when at least one answered OK.
    #[arg(long, conflicts_with = "to")]
    all: bool,
    /// How long to wait for each reply, e.g. 10s [default: limits.default_deadline_ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    deadline: Option<Duration>,
    /// With several calls, print a failed one's error as a JSON line and go on.
    #[arg(long)]
    keep_going: bool,
}

pub(crate) async fn call(g: &Global, args: CallArgs) -> Result<(), Failure> {
    let topic = Topic::new(&args.topic)
        .map_err(|e| Failure::invalid(format!("topic {:?}: {e}", args.topic)))?;
    if topic.is_reserved() && args.to.is_none() {
        return Err(Failure::invalid(format!(
            "{topic} is answered by every node: name one with --to NODE"
        )));
    }
    let single = match &args.json {
        Some(text) => Some(
            json_to_msgpack(text)
                .map(Bytes::from)
                .map_err(|e| Failure::invalid(format!("payload: {e}")))?,
        ),
        // `{}`: an instruction without arguments.
        None if stdin_is_terminal() => Some(Bytes::from_static(&[0x80])),
        None => None,
    };
    let session = Session::start(g, WAIT).await?;
    let result = Caller::new(&session, &args, topic).run(single).await;
    session.close().await;
    result
}

/// One `mlmesh call` at work.
struct Caller<'a> {
    session: &'a Session,
    args: &'a CallArgs,
    topic: Topic,
    out: Out,
    /// The node of `--to`.
    target: Option<NodeId>,
    /// Whether discovery has settled (for broadcasts and run lookups).
    settled: bool,
    /// The tracker of each run named so far.
    runs: HashMap<String, NodeId>,
    /// The exit status of the last failed call, under `--keep-going`.
    failed: Option<u8>,
}

impl<'a> Caller<'a> {
    fn new(session: &'a Session, args: &'a CallArgs, topic: Topic) -> Self {
        Self {
            session,
            args,
            topic,
            out: Out::new(),
            target: None,
            settled: false,
            runs: HashMap::new(),
            failed: None,
        }
    }

    async fn run(mut self, single: Option<Bytes>) -> Result<(), Failure> {
        if let Some(to) = &self.args.to {
            self.target = Some(self.session.resolve(to).await?.id);
        } else if self.args.all {
            self.session.settle().await;
            self.settled = true;
        } else {
            let topic = self.topic.as_str();
            self.session
                .wait_for(|peers| {
                    peers
                        .iter()
                        .any(|p| p.serves.iter().any(|s| s == topic))
                        .then_some(())
                })
                .await;
        }
        if let Some(data) = single {
            return self.one(data, None).await;
        }
        let max = self
            .session
            .node
            .config()
            .limits
            .max_message_size
            .saturating_mul(4);
        let mut lines = stdin_lines(max);
        let mut calls = 0;
        while let Some(item) = lines.recv().await {
            let (n, text) = item?;
            calls += 1;
            let data = match json_to_msgpack(&text) {
                Ok(data) => Bytes::from(data),
                Err(e) => {
                    let status = Status::error(Code::InvalidArgument, e.in_line());
                    self.failed(status, Some(n), true)?;
                    continue;
                }
            };
            self.one(data, Some(n)).await?;
        }
        if calls == 0 {
            // Nothing on stdin (`< /dev/null`, a script without input): one call with `{}`.
            return self.one(Bytes::from_static(&[0x80]), None).await;
        }
        match self.failed {
            Some(code) => Err(Failure::new(code, "")),
            None => Ok(()),
        }
    }

    /// A failed call (or unreadable input, `json`): the end of the command, or under
    /// `--keep-going` with several calls, an error line, and the command goes on.
    fn failed(&mut self, status: Status, line: Option<usize>, json: bool) -> Result<(), Failure> {
        let at = line.map(|n| format!("line {n}: ")).unwrap_or_default();
        let text = if json {
            format!("{at}{}", status.message)
        } else {
            format!("{at}{status}")
        };
        if !(self.args.keep_going && line.is_some()) {
            return Err(Failure::new(exit_code(status.code), text));
        }
        eprintln!("mlmesh: {text}");
        self.out
            .line(&format!("{{\"error\":{}}}", status_json(&status)))?;
        self.out.flush()?;
        self.failed = Some(exit_code(status.code));
        Ok(())
    }

    async fn one(&mut self, data: Bytes, line: Option<usize>) -> Result<(), Failure> {
        if self.args.all {
            return self.broadcast(data, line).await;
        }
        let mut options = CallOptions::default();
        if let Some(d) = self.args.deadline {
            options = options.deadline(d);
        }
        let target = match self.target {
            Some(t) => Some(t),
            None => match self.run_tracker(&data).await {
                Ok(t) => t,
                Err(status) => return self.failed(status, line, false),
            },
        };
        if let Some(t) = target {
            options = options.to(t);
        }
        match self
            .session
            .node
            .request_raw(self.topic.clone(), data, options)
            .await
        {
            Ok(reply) => {
                self.out.line(&reply_json(&reply))?;
                self.out.flush()
            }
            Err(status) => self.failed(status, line, false),
        }
    }

    async fn broadcast(&mut self, data: Bytes, line: Option<usize>) -> Result<(), Failure> {
        let acks = match self
            .session
            .node
            .broadcast_raw(self.topic.clone(), data, self.args.deadline)
            .await
        {
            Ok(acks) => acks,
            Err(status) => return self.failed(status, line, false),
        };
        let mut acks: Vec<Ack<Bytes>> = acks;
        acks.sort_by(|a, b| a.name.cmp(&b.name).then(a.node.cmp(&b.node)));
        for ack in &acks {
            let mut o = format!("{{\"node\":\"{}\",\"name\":", ack.node);
            write_str(&mut o, &ack.name);
            match &ack.result {
                Ok(reply) => {
                    o.push_str(",\"ok\":");
                    o.push_str(&reply_json(reply));
                }
                Err(status) => {
                    o.push_str(",\"error\":");
                    o.push_str(&status_json(status));
                }
            }
            o.push('}');
            self.out.line(&o)?;
        }
        self.out.flush()?;
        if acks.iter().any(|a| a.result.is_ok()) {
            return Ok(());
        }
        match acks.iter().find_map(|a| a.result.as_ref().err()) {
            Some(status) => {
                let status = Status {
                    message: format!("no provider answered OK; first error: {}", status.message),
                    ..status.clone()
                };
                self.failed(status, line, false)
            }
            None => Ok(()),
        }
    }

    /// For an instruction naming a run, the tracker that holds it (SPEC 15.6), when the
    /// mesh has more than one tracker; `None` lets the runtime route.
    async fn run_tracker(&mut self, data: &[u8]) -> Result<Option<NodeId>, Status> {
        if !RUN_SCOPED.contains(&self.topic.as_str()) {
            return Ok(None);
        }
        let Some(run) = run_of(data) else {
            return Ok(None);
        };
        if let Some(t) = self.runs.get(&run) {
            return Ok(Some(*t));
        }
        if !self.settled {
            self.session.settle().await;
            self.settled = true;
        }
        let trackers = self
            .session
            .node
            .peers()
            .iter()
            .filter(|p| p.serves.iter().any(|s| s == tracking::RUN_GET))
            .count();
        if trackers <= 1 {
            return Ok(None);
        }
        let mut probe = Vec::new();
        let get = rmpv::Value::Map(vec![(
            rmpv::Value::from("run"),
            rmpv::Value::from(run.as_str()),
        )]);
        let _ = rmpv::encode::write_value(&mut probe, &get);
        let acks = self
            .session
            .node
            .broadcast_raw(tracking::RUN_GET, Bytes::from(probe), self.args.deadline)
            .await?;
        if let Some(ack) = acks.iter().find(|a| a.result.is_ok()) {
            self.runs.insert(run, ack.node);
            return Ok(Some(ack.node));
        }
        // A tracker that could not answer may hold it: say so rather than NOT_FOUND.
        let unsure = acks
            .into_iter()
            .find_map(|a| a.result.err().filter(|s| s.code != Code::NotFound));
        Err(unsure.unwrap_or_else(|| {
            Status::error(
                Code::NotFound,
                format!("no tracker in mesh {} holds run {run}", self.session.mesh()),
            )
            .with_field("run")
        }))
    }
}

/// The `run` field of a payload map, if it has one that is a string.
fn run_of(data: &[u8]) -> Option<String> {
    let value = super::json::decode(data).ok()?;
    let rmpv::Value::Map(entries) = value else {
        return None;
    };
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some("run"))
        .and_then(|(_, v)| v.as_str().map(str::to_owned))
}

fn reply_json(data: &[u8]) -> String {
    match msgpack_to_json(data) {
        Ok(json) => json,
        Err(e) => {
            let mut s = format!("{{\"$bytes\":\"{}\",\"error\":", super::json::hex(data));
            write_str(&mut s, &e.to_string());
            s.push('}');
            s
        }
    }
}

/// A status as JSON: `{"code":"NOT_FOUND","message":..,"field":..}`.
pub(crate) fn status_json(s: &Status) -> String {
    let mut o = format!("{{\"code\":\"{}\",\"message\":", s.code.name());
    write_str(&mut o, &s.message);
    if let Some(field) = &s.field {
        o.push_str(",\"field\":");
        write_str(&mut o, field);
    }
    o.push('}');
    o
}
