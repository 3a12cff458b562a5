//! `doctor`'s checks of the peers it found: the addresses they advertise, the peers
//! they know that never joined, their heartbeats, and their clocks.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use mlmesh::protocol::sys::{self, Describe, Empty, Pong};
use mlmesh::{CallOptions, LeftReason, NodeId, PeerEvent, PeerInfo, PeerState};

use super::doctor::{advertise_fix, crashed_or_advertise_fix, explain, Report, PROBE};
use super::io::human_duration;
use super::probe;
use super::session::Session;

/// Pings per peer for the clock check; the one with the shortest round trip counts.
const PINGS: usize = 3;

/// Describes every peer; checks that what it advertises is reachable, and explains the
/// peers it knows that never joined. Returns the describe answers.
pub(crate) async fn check_peers(
    session: &Session,
    peers: &[PeerInfo],
    report: &mut Report,
) -> HashMap<NodeId, Describe> {
    let mut described = HashMap::new();
    let mut problems = 0;
    let me = session.node.id();
    for p in peers {
        let options = CallOptions::default().to(p.id).deadline(PROBE);
        let d: Describe = match session
            .node
            .request_with(sys::DESCRIBE, &Empty {}, options)
            .await
        {
            Ok(d) => d,
            Err(status) => {
                problems += 1;
                report.fail(
                    "peers",
                    format!(
                        "{} ({}) does not answer sys.describe: {status}",
                        p.name, p.id
                    ),
                    "the process may be stopped, hung or overloaded; restart it",
                );
                continue;
            }
        };
        // The runtime dials the address it reached; others may be told the advertised one.
        for (what, advertised, used) in [
            ("rpc", &d.endpoints.rpc, &p.endpoints.rpc),
            ("pub", &d.endpoints.publish, &p.endpoints.publish),
        ] {
            let target = if advertised == used { used } else { advertised };
            if let Err(e) = probe::reachable(target, PROBE).await {
                problems += 1;
                let fix = if advertised == used {
                    format!(
                        "open TCP port {} on {}'s host (firewall), or {}",
                        port(used),
                        p.name,
                        advertise_fix(&p.name)
                    )
                } else {
                    advertise_fix(&p.name)
                };
                report.fail(
                    "addresses",
                    format!(
                        "{} advertises {what} {advertised}, unreachable from here: {e}",
                        p.name
                    ),
                    fix,
                );
            }
        }
        described.insert(p.id, d);
    }
    // Peers a peer knows that never joined here.
    let known: HashSet<NodeId> = session.node.peers().iter().map(|p| p.id).collect();
    let mut strangers: HashMap<NodeId, (String, String, String)> = HashMap::new();
    for (by, d) in &described {
        let by_name = peers
            .iter()
            .find(|p| p.id == *by)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        for r in &d.peers {
            if r.id != me && !known.contains(&r.id) {
                strangers.entry(r.id).or_insert((
                    r.name.clone(),
                    r.endpoints.rpc.clone(),
                    by_name.clone(),
                ));
            }
        }
    }
    for (id, (name, rpc, by)) in strangers {
        problems += 1;
        let who = format!("{name} ({id}), known to {by},");
        let fix = crashed_or_advertise_fix(&name);
        explain(session.mesh(), &rpc, &who, &fix, report, "peers").await;
    }
    if !peers.is_empty() && problems == 0 {
        report.ok(
            "addresses",
            format!(
                "every peer is reachable at the addresses it advertises ({} checked)",
                peers.len()
            ),
        );
    }
    described
}

fn port(endpoint: &str) -> &str {
    endpoint.rsplit(':').next().unwrap_or(endpoint)
}

pub(crate) async fn check_clocks(
    session: &Session,
    peers: &[PeerInfo],
    max: Duration,
    report: &mut Report,
) {
    let mut offsets: Vec<(String, i128, u64)> = Vec::new();
    for p in peers {
        let mut best: Option<(u64, i128)> = None;
        for _ in 0..PINGS {
            let options = CallOptions::default().to(p.id).deadline(PROBE);
            let t0 = mlmesh::protocol::now_nanos();
            let Ok(pong) = session
                .node
                .request_with::<_, Pong>(sys::PING, &Empty {}, options)
                .await
            else {
                break;
            };
            let t1 = mlmesh::protocol::now_nanos();
            let rtt = t1.saturating_sub(t0);
            let offset = i128::from(pong.time) - (i128::from(t0) + i128::from(t1)) / 2;
            if best.is_none_or(|(r, _)| rtt < r) {
                best = Some((rtt, offset));
            }
        }
        if let Some((rtt, offset)) = best {
            offsets.push((p.name.clone(), offset, rtt));
        }
    }
    judge_clocks(&offsets, max, report);
}

/// Judges clock offsets measured from this host: (peer name, offset in ns, round trip
/// in ns). An offset counts only beyond what the round trip leaves uncertain.
fn judge_clocks(offsets: &[(String, i128, u64)], max: Duration, report: &mut Report) {
    if offsets.is_empty() {
        return;
    }
    let max_ns = i128::try_from(max.as_nanos()).unwrap_or(i128::MAX);
    let secs = |ns: i128| {
        let abs = ns.abs() as f64;
        if abs < 1e6 {
            format!("{:.0} µs", abs / 1e3)
        } else if abs < 1e9 {
            format!("{:.1} ms", abs / 1e6)
        } else {
            format!("{:.3} s", abs / 1e9)
        }
    };
    let mut bad = 0;
    for (name, offset, rtt) in offsets {
        let uncertain = i128::from(*rtt) / 2;
        if offset.abs() - uncertain > max_ns {
            bad += 1;
            let side = if *offset > 0 { "ahead of" } else { "behind" };
            report.fail(
                "clocks",
                format!(
                    "{name}'s clock is {} {side} this host's (±{}; the limit is {})",
                    secs(offset.abs()),
                    secs(uncertain),
                    human_duration(max)
                ),
                format!(
                    "synchronize the clocks with NTP (chrony, systemd-timesyncd) on {name}'s host and this one; \
                     event times and run timestamps from {name} are off by that much"
                ),
            );
        }
    }
    // Two peers may disagree with each other more than either does with this host.
    let lo = offsets.iter().min_by_key(|o| o.1);
    let hi = offsets.iter().max_by_key(|o| o.1);
    if let (0, Some(lo), Some(hi)) = (bad, lo, hi) {
        let spread = hi.1 - lo.1 - (i128::from(hi.2) + i128::from(lo.2)) / 2;
        if spread > max_ns {
            report.fail(
                "clocks",
                format!(
                    "the clocks of {} and {} differ by {}",
                    hi.0,
                    lo.0,
                    secs(hi.1 - lo.1)
                ),
                "synchronize the clocks of every host with NTP (chrony, systemd-timesyncd)",
            );
        } else {
            let worst = offsets.iter().map(|o| o.1.abs()).max().unwrap_or(0);
            report.ok(
                "clocks",
                format!(
                    "{} peer clock(s) agree with this host's within {} (limit {})",
                    offsets.len(),
                    secs(worst),
                    human_duration(max)
                ),
            );
        }
    }
}

pub(crate) fn check_heartbeats(
    first: &[PeerInfo],
    last: &[PeerInfo],
    events: &[PeerEvent],
    report: &mut Report,
) {
    let mut names: HashMap<NodeId, (String, Duration)> = HashMap::new();
    for p in first.iter().chain(last) {
        names.insert(p.id, (p.name.clone(), p.heartbeat));
    }
    for ev in events {
        if let PeerEvent::Joined(p) = ev {
            names.insert(p.id, (p.name.clone(), p.heartbeat));
        }
    }
    let label = |id: &NodeId| match names.get(id) {
        Some((name, hb)) => (format!("{name} ({id})"), *hb),
        None => (id.to_string(), Duration::ZERO),
    };
    let fix = |hb: Duration| {
        format!(
            "check that its process runs and is not stopped (kill -STOP), hung or starved of CPU, \
             and that TCP to its pub port passes; it heartbeats every {}",
            human_duration(hb)
        )
    };
    let mut stopped: HashSet<NodeId> = HashSet::new();
    for ev in events {
        match ev {
            PeerEvent::Left(id, LeftReason::Expired) if stopped.insert(*id) => {
                let (who, hb) = label(id);
                report.fail(
                    "heartbeat",
                    format!("{who} stopped sending heartbeats and left the mesh"),
                    fix(hb),
                );
            }
            PeerEvent::Left(id, LeftReason::Goodbye) => {
                let (who, _) = label(id);
                report.ok("heartbeat", format!("{who} left the mesh gracefully"));
            }
            _ => {}
        }
    }
    for p in last {
        if p.state == PeerState::Suspect && stopped.insert(p.id) {
            report.fail(
                "heartbeat",
                format!(
                    "{} ({}) stopped sending heartbeats: silent for {}",
                    p.name,
                    p.id,
                    human_duration(p.last_seen)
                ),
                fix(p.heartbeat),
            );
        }
    }
    for ev in events {
        if let PeerEvent::Suspect(id) = ev {
            if !stopped.contains(id)
                && last
                    .iter()
                    .any(|p| p.id == *id && p.state == PeerState::Alive)
            {
                let (who, hb) = label(id);
                report.warn(
                    "heartbeat",
                    format!("{who} missed heartbeats for a while, then recovered"),
                    fix(hb),
                );
                stopped.insert(*id);
            }
        }
    }
    if stopped.is_empty() && !last.is_empty() {
        report.ok(
            "heartbeat",
            format!("all {} peer(s) heartbeat on time", last.len()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::doctor::Level;

    fn judged(offsets: &[(&str, f64, f64)]) -> Vec<(Level, String)> {
        let offsets: Vec<(String, i128, u64)> = offsets
            .iter()
            .map(|(n, off, rtt)| ((*n).to_owned(), (off * 1e9) as i128, (rtt * 1e9) as u64))
            .collect();
        let mut report = Report::default();
        judge_clocks(&offsets, Duration::from_millis(500), &mut report);
        report
            .findings
            .into_iter()
            .map(|f| (f.level, f.message))
            .collect()
    }

    #[test]
    fn clock_skew_beyond_the_limit_fails_naming_the_peer() {
        let found = judged(&[("a", 2.5, 0.001), ("b", 0.01, 0.001)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, Level::Fail);
        assert!(
            found[0]
                .1
                .starts_with("a's clock is 2.500 s ahead of this host's"),
            "{found:?}"
        );
        let found = judged(&[("late", -0.9, 0.002)]);
        assert!(found[0].1.contains("900.0 ms behind"), "{found:?}");
    }

    #[test]
    fn skew_within_the_round_trip_or_the_limit_passes() {
        let found = judged(&[("a", 0.2, 0.0001), ("b", -0.1, 0.0001)]);
        assert_eq!(found[0].0, Level::Ok, "{found:?}");
        // 0.7 s off, but a 0.6 s round trip leaves it within 0.5 s.
        let found = judged(&[("slow", 0.7, 0.6)]);
        assert_eq!(found[0].0, Level::Ok, "{found:?}");
    }

    #[test]
    fn two_peers_may_disagree_with_each_other() {
        let found = judged(&[("a", 0.4, 0.0001), ("b", -0.4, 0.0001)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, Level::Fail);
        assert!(
            found[0]
                .1
                .contains("the clocks of a and b differ by 800.0 ms"),
            "{found:?}"
        );
    }
}
