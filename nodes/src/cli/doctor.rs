//! `mlmesh doctor`: checks that explain what keeps a mesh from working, each with a fix.
//!
//! It joins the mesh like every command, watches it for `--wait` (3 s by default, so
//! that a peer whose heartbeats stop is seen going suspect), and beside the runtime it
//! looks at what the runtime ignores: mDNS records of every mesh and version, seeds and
//! introduced peers that never join, advertised addresses nobody can dial.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use mlmesh::protocol::sys::Describe;
use mlmesh::protocol::PROTOCOL_VERSION;
use mlmesh::{Config, NodeId, PeerEvent, PeerInfo, Via};

use super::io::{human_duration, Out};
use super::probe::{self, Answer, Browser, Record};
use super::session::{load_config, Session};
use super::{parse_duration, Failure, Global, EXIT_PROBLEMS};

/// The default observation time: long enough to see a stopped peer go suspect at the
/// default heartbeat of 1 s.
const WAIT: Duration = Duration::from_secs(3);
/// How long one probe (a connect, a describe) may take.
pub(crate) const PROBE: Duration = Duration::from_millis(1000);

/// Check the mesh and explain problems, each with a fix.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Checks: the configuration; the configured ports (already in use?); mDNS (records seen,
multicast blocked?, nodes of another mesh or protocol version); seeds (reachable? of this
mesh and version?); every peer's advertised addresses (reachable from here?) and the peers
it knows that never joined; heartbeats (a node that stopped sending them); clock skew
(sys.ping returns the responder's clock). Exits 69 when a check fails, 0 otherwise
(warnings included).

Examples:
  mlmesh doctor
  mlmesh doctor --seed tcp://10.0.0.2:7001 --wait 5s --json")]
pub(crate) struct DoctorArgs {
    /// One JSON object a check: check, status (ok, warn, fail), message, fix.
    #[arg(long)]
    json: bool,
    /// The largest clock difference between nodes that passes.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "500ms")]
    max_skew: Duration,
}

/// The order findings are printed in: from the configuration outwards.
const ORDER: [&str; 9] = [
    "config",
    "ports",
    "discovery",
    "mdns",
    "seeds",
    "peers",
    "addresses",
    "heartbeat",
    "clocks",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Ok,
    Warn,
    Fail,
}

/// The outcome of one check.
#[derive(Debug)]
pub(crate) struct Finding {
    pub(crate) check: &'static str,
    pub(crate) level: Level,
    pub(crate) message: String,
    pub(crate) fix: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) findings: Vec<Finding>,
}

impl Report {
    pub(crate) fn ok(&mut self, check: &'static str, message: impl Into<String>) {
        self.push(check, Level::Ok, message.into(), None);
    }

    pub(crate) fn warn(
        &mut self,
        check: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(check, Level::Warn, message.into(), Some(fix.into()));
    }

    pub(crate) fn fail(
        &mut self,
        check: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(check, Level::Fail, message.into(), Some(fix.into()));
    }

    fn push(&mut self, check: &'static str, level: Level, message: String, fix: Option<String>) {
        self.findings.push(Finding {
            check,
            level,
            message,
            fix,
        });
    }

    fn failures(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.level == Level::Fail)
            .count()
    }

    fn print(&self, json: bool) -> Result<(), Failure> {
        let mut out = Out::new();
        let mut findings: Vec<&Finding> = self.findings.iter().collect();
        findings.sort_by_key(|f| ORDER.iter().position(|c| *c == f.check));
        for f in findings {
            let level = match f.level {
                Level::Ok => "ok",
                Level::Warn => "warn",
                Level::Fail => "fail",
            };
            if json {
                out.line(
                    &serde_json::json!({
                        "check": f.check,
                        "status": level,
                        "message": f.message,
                        "fix": f.fix,
                    })
                    .to_string(),
                )?;
            } else {
                let tag = if f.level == Level::Fail {
                    "FAIL"
                } else {
                    level
                };
                out.line(&format!("{tag:<5} {:<10} {}", f.check, f.message))?;
                if let Some(fix) = &f.fix {
                    out.line(&format!("{:<16} fix: {fix}", ""))?;
                }
            }
        }
        out.flush()
    }
}

/// The fix for a node that may have crashed, or advertises an address nobody can dial.
pub(crate) fn crashed_or_advertise_fix(name: &str) -> String {
    format!(
        "if {name} crashed, restart it (peers forget it within 3 heartbeats, mDNS within 2 min); \
         if it runs, {}",
        advertise_fix(name)
    )
}

/// The fix for a node nobody can dial at the address it advertises.
pub(crate) fn advertise_fix(name: &str) -> String {
    format!(
        "on {name}, set network.advertise (MLMESH_NETWORK__ADVERTISE) to an address every peer \
         can reach, or bind it to one (network.bind, network.interface); check firewalls"
    )
}

pub(crate) async fn doctor(g: &Global, args: DoctorArgs) -> Result<(), Failure> {
    let config = load_config(g)?;
    let mut report = Report::default();
    let wait = g.wait.unwrap_or(WAIT);
    check_config(&config, &mut report);
    let browser = if config.discovery.mdns {
        match Browser::start(&config) {
            Ok(b) => Some(b),
            Err(e) => {
                report.fail(
                    "mdns",
                    format!("cannot browse mDNS: {e}"),
                    "check discovery.mdns_interfaces and network.interface name existing interfaces; or turn mDNS off and use seeds",
                );
                None
            }
        }
    } else {
        None
    };
    let browsing = browser.map(|b| tokio::spawn(b.collect(Instant::now() + wait)));
    let session = Session::start(g, wait).await?;
    let watch = tokio::spawn(watch_peers(session.node.watch_peers(), session.deadline()));
    let peers = session.settle().await;

    check_seeds(&config, &session, &mut report).await;
    let described = super::peers::check_peers(&session, &peers, &mut report).await;
    super::peers::check_clocks(&session, &peers, args.max_skew, &mut report).await;

    // Watch the rest of the wait: peers that stop heartbeating go suspect meanwhile.
    tokio::time::sleep_until(session.deadline()).await;
    let events = watch.await.unwrap_or_default();
    let records = match browsing {
        Some(task) => Some(task.await.unwrap_or_default()),
        None => None,
    };
    let final_peers = session.node.peers();
    check_discovery(
        &session,
        &final_peers,
        records.as_deref(),
        &described,
        &mut report,
    )
    .await;
    super::peers::check_heartbeats(&peers, &final_peers, &events, &mut report);
    check_ports(&config, &final_peers, &mut report);
    session.close().await;

    report.print(args.json)?;
    match report.failures() {
        0 => Ok(()),
        n => Err(Failure::new(
            EXIT_PROBLEMS,
            format!("doctor found {n} problem(s)"),
        )),
    }
}

fn check_config(config: &Config, report: &mut Report) {
    let d = &config.discovery;
    let mdns = if d.mdns {
        match probe::mdns_interfaces(config) {
            Ok(ifs) if ifs.is_empty() => "on (every IPv4 interface)".to_owned(),
            Ok(ifs) => format!(
                "on ({})",
                ifs.iter()
                    .map(|i| format!("{i:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => format!("on ({e})"),
        }
    } else {
        "off".into()
    };
    let seeds = if d.seeds.is_empty() {
        "none".to_owned()
    } else {
        d.seeds.join(", ")
    };
    report.ok(
        "config",
        format!(
            "mesh {}, bind {}, mDNS {mdns}, seeds: {seeds}, heartbeat {} ms",
            config.node.mesh, config.network.bind, config.liveness.heartbeat_ms
        ),
    );
    if !d.mdns && d.seeds.is_empty() {
        report.fail(
            "discovery",
            "mDNS is off and no seeds are set: this node can find no peers",
            "turn mDNS on (discovery.mdns = true) or name a seed: --seed tcp://HOST:PORT or MLMESH_DISCOVERY__SEEDS",
        );
    }
}

/// Collects the peer events until `until`.
async fn watch_peers(
    mut events: tokio::sync::broadcast::Receiver<PeerEvent>,
    until: Instant,
) -> Vec<PeerEvent> {
    let mut seen = Vec::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return seen,
            ev = events.recv() => match ev {
                Ok(ev) => seen.push(ev),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return seen,
            },
        }
    }
}

/// Why a candidate that is not a peer did not join, from a probe of its rpc endpoint.
pub(crate) async fn explain(
    mesh: &str,
    endpoint: &str,
    who: &str,
    unreachable_fix: &str,
    report: &mut Report,
    check: &'static str,
) {
    if let Err(e) = probe::reachable(endpoint, PROBE).await {
        report.fail(
            check,
            format!("{who} at {endpoint} is unreachable: {e}"),
            unreachable_fix,
        );
        return;
    }
    match probe::describe(endpoint, PROBE).await {
        Answer::Node(d) if d.mesh != mesh => report.fail(
            check,
            format!("{who} at {endpoint} is node {} of mesh {:?}, not {mesh:?}", d.name, d.mesh),
            format!(
                "nodes ignore other meshes: use the same mesh on both (--mesh, MLMESH_NODE__MESH={}), or another seed",
                d.mesh
            ),
        ),
        Answer::Node(d) => report.warn(
            check,
            format!("{who} at {endpoint} ({}) answers but has not joined yet", d.name),
            "it may have just started; run doctor again, or with a longer --wait",
        ),
        Answer::Version(why) => report.fail(
            check,
            format!("{who} at {endpoint} speaks another protocol version: {why}; this mlmesh speaks {PROTOCOL_VERSION}"),
            "run the same mlmesh protocol version on every node (upgrade the older side)",
        ),
        Answer::Refused(status) => report.fail(
            check,
            format!("{who} at {endpoint} refused sys.describe: {status}"),
            "check that node's logs (MLMESH_LOG=debug)",
        ),
        Answer::Foreign(why) => report.fail(
            check,
            format!("{who} at {endpoint} is not an mlmesh node: {why}"),
            "point it at a node's rpc endpoint (its ready line's \"rpc\", or `mlmesh nodes`)",
        ),
        Answer::Silent(why) => report.fail(
            check,
            format!("{who} at {endpoint} does not answer sys.describe: {why}"),
            "the process may be stopped, hung or overloaded; restart it",
        ),
    }
}

async fn check_seeds(config: &Config, session: &Session, report: &mut Report) {
    let peers = session.node.peers();
    for seed in &config.discovery.seeds {
        if let Some(p) = peers.iter().find(|p| p.endpoints.rpc == *seed) {
            report.ok("seeds", format!("seed {seed} is {} ({})", p.name, p.id));
            continue;
        }
        let fix = format!(
            "check that a node of this mesh listens at {seed} (its network.rpc_port) and that \
             firewalls pass TCP to it; or correct the seed (discovery.seeds, --seed)"
        );
        explain(session.mesh(), seed, "seed", &fix, report, "seeds").await;
    }
}

async fn check_discovery(
    session: &Session,
    peers: &[PeerInfo],
    records: Option<&[Record]>,
    described: &HashMap<NodeId, Describe>,
    report: &mut Report,
) {
    let count = |via: Via| peers.iter().filter(|p| p.via == via).count();
    if peers.is_empty() {
        report.fail(
            "discovery",
            format!(
                "no peers found in mesh {} within {}",
                session.mesh(),
                human_duration(session.wait)
            ),
            "start a node of this mesh, or see the mdns and seeds checks; a longer --wait helps on slow networks",
        );
    } else {
        report.ok(
            "discovery",
            format!(
                "{} peer(s) in mesh {}: {} by mDNS, {} by seeds, {} introduced by other peers",
                peers.len(),
                session.mesh(),
                count(Via::Mdns),
                count(Via::Seed),
                count(Via::Introduction)
            ),
        );
    }
    let Some(records) = records else { return };
    let me = session.node.id();
    let others: Vec<&Record> = records.iter().filter(|r| r.id != Some(me)).collect();
    let ours = records.iter().any(|r| r.id == Some(me));
    if others.is_empty() {
        let via_seeds = count(Via::Seed) + count(Via::Introduction) > 0;
        let message = format!(
            "no mDNS records of other nodes seen within {}{}: multicast may be blocked (containers, VPNs and clouds often drop it), or no node advertises on these interfaces",
            human_duration(session.wait),
            if ours { "" } else { " (not even this node's own)" }
        );
        let fix = "name a seed, which needs no multicast: --seed tcp://HOST:PORT or MLMESH_DISCOVERY__SEEDS=tcp://HOST:PORT (a node started with a fixed MLMESH_NETWORK__RPC_PORT); or check discovery.mdns_interfaces";
        if via_seeds {
            report.warn("mdns", message, fix);
        } else {
            report.fail("mdns", message, fix);
        }
        return;
    }
    let known: HashSet<NodeId> = peers.iter().map(|p| p.id).collect();
    let mut fine = 0;
    for r in others {
        let label = format!(
            "{} ({})",
            r.name,
            r.id.map(|i| i.to_string())
                .unwrap_or_else(|| "no id".into())
        );
        if r.version != PROTOCOL_VERSION.to_string() {
            report.fail(
                "mdns",
                format!(
                    "{label} advertises protocol {:?}; this mlmesh speaks {PROTOCOL_VERSION}",
                    r.version
                ),
                "run the same mlmesh protocol version on every node (upgrade the older side)",
            );
        } else if r.mesh != session.mesh() {
            report.warn(
                "mdns",
                format!("{label} advertises mesh {:?}, not {:?}: it is ignored", r.mesh, session.mesh()),
                format!("if it belongs with this mesh, give both the same mesh (--mesh, MLMESH_NODE__MESH={})", r.mesh),
            );
        } else if r
            .id
            .is_some_and(|id| known.contains(&id) || described.contains_key(&id))
        {
            fine += 1;
        } else {
            let endpoints: Vec<String> = r
                .addresses
                .iter()
                .map(|a: &Ipv4Addr| format!("tcp://{a}:{}", r.rpc_port))
                .collect();
            match endpoints.first() {
                Some(endpoint) => {
                    let who = format!("{label}, advertised over mDNS,");
                    let fix = crashed_or_advertise_fix(&r.name);
                    explain(session.mesh(), endpoint, &who, &fix, report, "mdns").await;
                }
                None => report.fail(
                    "mdns",
                    format!("{label} advertises no IPv4 address"),
                    advertise_fix(&r.name),
                ),
            }
        }
    }
    if fine > 0 {
        report.ok(
            "mdns",
            format!("{fine} node(s) of this mesh advertise over mDNS and joined"),
        );
    }
}

fn check_ports(config: &Config, peers: &[PeerInfo], report: &mut Report) {
    let bind = match config.bind_address() {
        Ok(b) => b,
        Err(e) => {
            report.fail(
                "ports",
                e.to_string(),
                "name an interface of this host with an IPv4 address, or unset network.interface",
            );
            return;
        }
    };
    let mut free = Vec::new();
    for (field, port) in [
        ("network.pub_port", config.network.pub_port),
        ("network.rpc_port", config.network.rpc_port),
    ] {
        if port == 0 {
            continue;
        }
        match TcpListener::bind((bind, port)) {
            Ok(_) => free.push(port.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let suffix = format!(":{port}");
                match peers.iter().find(|p| p.endpoints.rpc.ends_with(&suffix) || p.endpoints.publish.ends_with(&suffix)) {
                    Some(p) => report.warn(
                        "ports",
                        format!("port {port} ({field}) on {bind} is in use by node {} ({})", p.name, p.id),
                        "fine if that node runs with this config; another node with it cannot start: give each node its own ports, or 0 for free ones",
                    ),
                    None => report.fail(
                        "ports",
                        format!("port {port} ({field}) on {bind} is in use by another process"),
                        format!("stop that process (`ss -ltnp 'sport = :{port}'` names it), or choose another port, or 0 for a free one"),
                    ),
                }
            }
            Err(e) => report.fail(
                "ports",
                format!("cannot bind {bind}:{port} ({field}): {e}"),
                "set network.bind to an address of this host (or 0.0.0.0), or network.interface",
            ),
        }
    }
    if !free.is_empty() {
        report.ok(
            "ports",
            format!("port(s) {} on {bind} are free", free.join(", ")),
        );
    }
}
