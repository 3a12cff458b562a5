//! `mlmesh sub`, `mlmesh pub` and `mlmesh hz`: events from the shell.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{SelectAll, Stream, StreamExt};
use futures::FutureExt;
use tokio::time::Instant;

use mlmesh::protocol::{EncodeError, Pattern, Topic};
use mlmesh::{Code, Event, MessageId, NodeHandle, NodeId, PeerEvent, PublishError, Subscription};
use tokio::sync::broadcast::error::TryRecvError;

use super::io::{clock, human_duration, stdin_is_terminal, stdin_lines, table, Out};
use super::json::{msgpack_to_json, write_str, JsonError};
use super::session::{Session, CLI_NAME};
use super::{json_help, parse_duration, Failure, Global};

/// The default wait for discovery.
const WAIT: Duration = Duration::from_millis(1500);
/// Message ids remembered to drop an event that two patterns both match.
const DEDUPE: usize = 8192;
/// Most events written before stdout is flushed.
const BATCH: usize = 1024;

/// Print events as JSON Lines: the envelope's fields and the payload, one event a line.
#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Each line: {\"v\":1,\"id\":..,\"type\":..,\"kind\":\"event\",\"source\":..,\"source_name\":..,\n",
    "\"time\":<unix ns>,\"seq\":..,\"missed\":<events lost just before this one>,\"data\":<payload>}.\n",
    "Sequence gaps (lost events) and events this command could not keep up with are\n",
    "reported on stderr. A closed stdout ends the command quietly with status 0.\n\n",
    "Examples:\n",
    "  mlmesh sub 'train.*.ended' --count 3\n",
    "  mlmesh sub 'tracking.**' --human\n",
    "  mlmesh sub 'tracking.metrics.logged' | jq -c .data\n\n",
    json_help!()
))]
pub(crate) struct SubArgs {
    /// Topic patterns: `*` matches one segment, a final `**` the rest (`train.*.ended`).
    #[arg(value_name = "PATTERN", required = true)]
    patterns: Vec<String>,
    /// Stop after N events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this long, e.g. 10s (exit 4 if --count N was not reached by then).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// One readable line an event: time (UTC), topic, seq, source name, payload.
    #[arg(long)]
    human: bool,
}

/// Publish events: one given as JSON, or one per line of stdin (JSON Lines).
#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "The command first waits (at most --wait) until every peer it finds has connected to it,\n",
    "so that the events reach them, and flushes every queued event before it exits. Blank\n",
    "lines are skipped; a line that is not JSON stops it (those before it are published).\n\n",
    "Examples:\n",
    "  mlmesh pub data.batch.validated '{\"dataset\":\"iris-v3\",\"rows\":150}'\n",
    "  cat events.jsonl | mlmesh pub tracking.metrics.logged\n\n",
    json_help!()
))]
pub(crate) struct PubArgs {
    /// The event's topic, e.g. `data.batch.validated`.
    #[arg(value_name = "TOPIC")]
    topic: String,
    /// The payload as JSON; without it, every line of stdin is one event's payload.
    #[arg(value_name = "JSON")]
    json: Option<String>,
}

/// Show the message rate and gap count per topic, refreshed once a second.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
RATE is events a second over the last second; GAPS counts events known lost (sequence
gaps) since the start; SOURCES is how many nodes published the topic.

Examples:
  mlmesh hz 'tracking.**'
  mlmesh hz 'train.*.ended' --json --timeout 10s")]
pub(crate) struct HzArgs {
    /// Topic patterns, as for `sub`.
    #[arg(value_name = "PATTERN", required = true)]
    patterns: Vec<String>,
    /// Each second, one JSON object a topic: type, rate, count, total, gaps, sources.
    #[arg(long)]
    json: bool,
    /// Stop after this long, e.g. 30s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
}

type Delivered = (usize, Event, u64);
type EventStream = Pin<Box<dyn Stream<Item = Delivered> + Send>>;

/// The events of several patterns as one stream, each event once.
struct Merged {
    stream: SelectAll<EventStream>,
    dropped: Vec<u64>,
    seen: HashSet<(NodeId, MessageId)>,
    order: VecDeque<(NodeId, MessageId)>,
    dedupe: bool,
}

impl Merged {
    fn new(node: &NodeHandle, patterns: &[String]) -> Result<Self, Failure> {
        let mut stream = SelectAll::new();
        for (i, p) in patterns.iter().enumerate() {
            let sub = node
                .subscribe(p)
                .map_err(|e| Failure::invalid(format!("pattern {p:?}: {e}")))?;
            let events: EventStream = Box::pin(futures::stream::unfold(
                sub,
                move |mut sub: Subscription| async move {
                    let ev = sub.recv().await?;
                    let dropped = sub.dropped();
                    Some(((i, ev, dropped), sub))
                },
            ));
            stream.push(events);
        }
        Ok(Self {
            stream,
            dropped: vec![0; patterns.len()],
            seen: HashSet::new(),
            order: VecDeque::new(),
            dedupe: patterns.len() > 1,
        })
    }

    /// The next event (cancel-safe).
    async fn next(&mut self) -> Option<Event> {
        loop {
            let item = self.stream.next().await?;
            if let Some(ev) = self.accept(item) {
                return Some(ev);
            }
        }
    }

    /// An event if one is ready now.
    fn ready(&mut self) -> Option<Event> {
        loop {
            let item = self.stream.next().now_or_never()??;
            if let Some(ev) = self.accept(item) {
                return Some(ev);
            }
        }
    }

    fn accept(&mut self, (i, ev, dropped): Delivered) -> Option<Event> {
        if dropped > self.dropped[i] {
            eprintln!(
                "mlmesh: {} event(s) dropped: this command fell behind (its buffer is full)",
                dropped - self.dropped[i]
            );
            self.dropped[i] = dropped;
        }
        if self.dedupe {
            let key = (ev.source(), ev.envelope.id);
            if !self.seen.insert(key) {
                return None;
            }
            self.order.push_back(key);
            if self.order.len() > DEDUPE {
                if let Some(old) = self.order.pop_front() {
                    self.seen.remove(&old);
                }
            }
        }
        Some(ev)
    }
}

fn check_patterns(patterns: &[String]) -> Result<(), Failure> {
    for p in patterns {
        Pattern::new(p).map_err(|e| Failure::invalid(format!("pattern {p:?}: {e}")))?;
    }
    Ok(())
}

/// Node names by id, from the peer table and from join events: a publisher that
/// leaves right after publishing (`mlmesh pub`) is out of the table by the time its
/// events are printed, but its name is known.
struct Names {
    me: NodeId,
    names: HashMap<NodeId, String>,
    joins: tokio::sync::broadcast::Receiver<PeerEvent>,
}

impl Names {
    fn new(node: &NodeHandle) -> Self {
        let joins = node.watch_peers();
        let mut names: HashMap<NodeId, String> =
            node.peers().into_iter().map(|p| (p.id, p.name)).collect();
        names.insert(node.id(), CLI_NAME.to_owned());
        Self {
            me: node.id(),
            names,
            joins,
        }
    }

    fn get(&mut self, node: &NodeHandle, id: NodeId) -> Option<&str> {
        if !self.names.contains_key(&id) {
            loop {
                match self.joins.try_recv() {
                    Ok(PeerEvent::Joined(p)) => {
                        self.names.insert(p.id, p.name);
                    }
                    Ok(_) | Err(TryRecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
            if !self.names.contains_key(&id) && id != self.me {
                let name = node.peers().into_iter().find(|p| p.id == id)?.name;
                self.names.insert(id, name);
            }
        }
        if self.names.len() > 4096 {
            // Bounded: forget and learn again.
            let keep = self.names.remove(&id);
            self.names.clear();
            if let Some(name) = keep {
                self.names.insert(id, name);
            }
        }
        self.names.get(&id).map(String::as_str)
    }
}

/// Resolves when Ctrl-C or SIGTERM arrives.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Sleeps for `d`, or forever.
async fn maybe_sleep(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn sub(g: &Global, args: SubArgs) -> Result<(), Failure> {
    check_patterns(&args.patterns)?;
    let session = Session::start(g, WAIT).await?;
    let result = sub_in(&session, &args).await;
    session.close().await;
    result
}

async fn sub_in(session: &Session, args: &SubArgs) -> Result<(), Failure> {
    let node = &session.node;
    let mut merged = Merged::new(node, &args.patterns)?;
    let mut names = Names::new(node);
    let mut out = Out::new();
    let mut printed = 0u64;
    let stop = maybe_sleep(args.timeout);
    tokio::pin!(stop);
    let signal = interrupted();
    tokio::pin!(signal);
    let want = args.count.unwrap_or(u64::MAX);
    while printed < want {
        let first = tokio::select! {
            _ = &mut stop => {
                return match args.count {
                    Some(n) => Err(Failure::code(
                        Code::DeadlineExceeded,
                        format!(
                            "--count {n}: {printed} event(s) arrived within {}",
                            human_duration(args.timeout.unwrap_or_default())
                        ),
                    )),
                    None => Ok(()),
                };
            }
            _ = &mut signal => return Ok(()),
            ev = merged.next() => match ev {
                Some(ev) => ev,
                None => return Ok(()),
            },
        };
        let mut next = Some(first);
        let mut batch = 0;
        while let Some(ev) = next.take() {
            let name = names.get(node, ev.source()).map(str::to_owned);
            report_gap(&ev, name.as_deref());
            let line = if args.human {
                human_event(&ev, name.as_deref())
            } else {
                json_event(&ev, name.as_deref())
            };
            out.line(&line)?;
            printed += 1;
            batch += 1;
            if printed < want && batch < BATCH {
                next = merged.ready();
            }
        }
        out.flush()?;
    }
    Ok(())
}

fn report_gap(ev: &Event, name: Option<&str>) {
    if ev.missed > 0 {
        eprintln!(
            "mlmesh: gap: {} event(s) of {} from {} ({}) missed before seq {}",
            ev.missed,
            ev.topic(),
            name.unwrap_or("?"),
            ev.source(),
            ev.seq()
        );
    }
}

fn data_json(data: &Bytes) -> String {
    match msgpack_to_json(data) {
        Ok(json) => json,
        Err(e) => {
            let mut s = String::from("{\"$bytes\":\"");
            s.push_str(&super::json::hex(data));
            s.push_str("\",\"error\":");
            write_str(&mut s, &e.to_string());
            s.push('}');
            s
        }
    }
}

/// One event as a JSON line: the envelope's fields, `missed`, and the payload.
fn json_event(ev: &Event, name: Option<&str>) -> String {
    let env = &ev.envelope;
    let mut o = String::with_capacity(160 + env.data.len() * 2);
    let _ = write!(
        o,
        "{{\"v\":{},\"id\":\"{}\",\"type\":\"{}\",\"kind\":\"event\",\"source\":\"{}\",\"source_name\":",
        env.version, env.id, env.topic, env.source
    );
    match name {
        Some(n) => write_str(&mut o, n),
        None => o.push_str("null"),
    }
    let _ = write!(
        o,
        ",\"time\":{},\"seq\":{},\"missed\":{},\"data\":{}}}",
        env.time,
        ev.seq(),
        ev.missed,
        data_json(&env.data)
    );
    o
}

fn human_event(ev: &Event, name: Option<&str>) -> String {
    let env = &ev.envelope;
    let source = match name {
        Some(n) => n.to_owned(),
        None => env.source.0.simple().to_string()[..8].to_owned(),
    };
    let mut line = format!(
        "{} {} #{} {} {}",
        clock(env.time),
        env.topic,
        ev.seq(),
        source,
        data_json(&env.data)
    );
    if ev.missed > 0 {
        let _ = write!(line, "  (after {} missed)", ev.missed);
    }
    line
}

pub(crate) async fn publish(g: &Global, args: PubArgs) -> Result<(), Failure> {
    let topic = Topic::new(&args.topic)
        .map_err(|e| Failure::invalid(format!("topic {:?}: {e}", args.topic)))?;
    if topic.is_reserved() {
        return Err(Failure::invalid(format!(
            "topic {topic}: the sys. namespace is reserved for the runtime"
        )));
    }
    let single = match &args.json {
        Some(text) => Some(payload(text).map_err(|e| Failure::invalid(format!("payload: {e}")))?),
        None => None,
    };
    let session = Session::start(g, WAIT).await?;
    let result = publish_in(&session, topic, single).await;
    session.close().await;
    result
}

fn payload(text: &str) -> Result<Bytes, JsonError> {
    super::json::json_to_msgpack(text).map(Bytes::from)
}

async fn publish_in(session: &Session, topic: Topic, single: Option<Bytes>) -> Result<(), Failure> {
    if single.is_none() && stdin_is_terminal() {
        eprintln!("mlmesh: reading one JSON payload a line from the terminal; Ctrl-D ends");
    }
    // Let discovery settle first: peers introduced by the seed join a moment later.
    session.settle().await;
    let (peers, missing) = session.announce().await;
    if peers == 0 {
        eprintln!(
            "mlmesh: warning: no peers found in mesh {} within {}: nobody receives these events (see `mlmesh doctor`)",
            session.mesh(),
            human_duration(session.wait)
        );
    } else if missing > 0 {
        eprintln!(
            "mlmesh: warning: {missing} of {peers} peers had not subscribed to this command's events in time: they may miss them (see `mlmesh doctor`)"
        );
    }
    let node = &session.node;
    let send = |data: Bytes, line: Option<usize>| {
        let topic = topic.clone();
        async move {
            node.publish_raw(topic, data).await.map_err(|e| {
                let at = line.map(|n| format!("line {n}: ")).unwrap_or_default();
                match e {
                    PublishError::Encode(EncodeError::TooLarge { .. }) => {
                        Failure::code(Code::TooLarge, format!("{at}{e}"))
                    }
                    PublishError::Encode(e) => Failure::invalid(format!("{at}{e}")),
                    e => Failure::internal(format!("{at}{e}")),
                }
            })
        }
    };
    if let Some(data) = single {
        return send(data, None).await;
    }
    let max = node.config().limits.max_message_size.saturating_mul(4);
    let mut lines = stdin_lines(max);
    while let Some(item) = lines.recv().await {
        let (n, text) = item?;
        let data =
            payload(&text).map_err(|e| Failure::invalid(format!("line {n}: {}", e.in_line())))?;
        send(data, Some(n)).await?;
    }
    Ok(())
}

/// What `hz` counts for one topic.
#[derive(Debug, Default)]
struct Rate {
    window: u64,
    total: u64,
    gaps: u64,
    sources: HashSet<NodeId>,
}

pub(crate) async fn hz(g: &Global, args: HzArgs) -> Result<(), Failure> {
    check_patterns(&args.patterns)?;
    let session = Session::start(g, WAIT).await?;
    let result = hz_in(&session, &args).await;
    session.close().await;
    result
}

async fn hz_in(session: &Session, args: &HzArgs) -> Result<(), Failure> {
    let mut merged = Merged::new(&session.node, &args.patterns)?;
    let mut out = Out::new();
    let clear = !args.json && Out::is_terminal();
    let mut rates: BTreeMap<String, Rate> = BTreeMap::new();
    let mut tick = tokio::time::interval_at(
        Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let stop = maybe_sleep(args.timeout);
    tokio::pin!(stop);
    let signal = interrupted();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = &mut signal => return Ok(()),
            ev = merged.next() => {
                let Some(ev) = ev else { return Ok(()) };
                let r = rates.entry(ev.topic().to_string()).or_default();
                r.window += 1;
                r.total += 1;
                r.gaps += ev.missed;
                r.sources.insert(ev.source());
            }
            now = tick.tick() => {
                let secs = (now - last).as_secs_f64().max(1e-3);
                last = now;
                let lines = hz_lines(&rates, secs, args.json, &args.patterns);
                if clear {
                    out.text("\x1b[2J\x1b[H")?;
                }
                for line in lines {
                    out.line(&line)?;
                }
                if !args.json && !clear {
                    out.line("")?;
                }
                out.flush()?;
                for r in rates.values_mut() {
                    r.window = 0;
                }
            }
        }
    }
}

fn hz_lines(
    rates: &BTreeMap<String, Rate>,
    secs: f64,
    json: bool,
    patterns: &[String],
) -> Vec<String> {
    if json {
        return rates
            .iter()
            .map(|(topic, r)| {
                serde_json::json!({
                    "type": topic,
                    "rate": (r.window as f64 / secs * 10.0).round() / 10.0,
                    "count": r.window,
                    "total": r.total,
                    "gaps": r.gaps,
                    "sources": r.sources.len(),
                })
                .to_string()
            })
            .collect();
    }
    if rates.is_empty() {
        return vec![format!(
            "waiting for events matching {}",
            patterns.join(" ")
        )];
    }
    let mut rows = vec![["TOPIC", "RATE/s", "TOTAL", "GAPS", "SOURCES"]
        .map(String::from)
        .to_vec()];
    for (topic, r) in rates {
        rows.push(vec![
            topic.clone(),
            format!("{:.1}", r.window as f64 / secs),
            r.total.to_string(),
            r.gaps.to_string(),
            r.sources.len().to_string(),
        ]);
    }
    table(&rows)
}
