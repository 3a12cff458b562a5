//! Discovery over real mDNS, between node processes, each test in network namespaces of
//! its own.
//!
//! mdns-sd joins its multicast group on every interface it may use, so a node with mDNS
//! on must never run in the machine's own network namespace, and a test that watches
//! mDNS must run where its nodes are. Each test here therefore runs in two parts:
//!
//! - **outside** (what `cargo test` starts): it makes fresh namespaces (a [`NetNs`], or a
//!   [`Lan`] of hosts on a bridge; dropping them kills what is left inside and deletes
//!   them, panics included), then runs *this same test binary* again inside one of them,
//!   `ip netns exec NS <this binary> --exact <this test>`, and passes or fails with that
//!   run ([`rerun_inside`]);
//! - **inside** (the re-run, told so by an environment variable): the test body. Its node
//!   processes (`mlmesh-node`, started as [`ChildNode`]s) inherit the namespace, so it
//!   can start, kill and observe them directly: it reads each node's peer list with a
//!   `sys.describe` from outside the mesh ([`describe_of`]), and sees the mDNS records
//!   themselves with an mdns-sd browser of its own.
//!
//! Measurements are printed as `MEASURE` lines (`cargo test --test mdns -- --nocapture`).
//! Needs root and iproute2.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent};
use mlmesh::protocol::MDNS_SERVICE_TYPE;
use mlmesh::{CallOptions, Config, Node, NodeId, Via};

/// How long one re-run inside a namespace may take.
const INNER_TIMEOUT: Duration = Duration::from_secs(45);

/// What the outside part prepares for a test body.
enum Setup {
    /// One namespace with only `lo`.
    Loopback,
    /// `n` hosts on a bridge; the body runs on host 0.
    Lan(usize),
}

/// What a test body learns about its namespaces.
#[derive(Debug)]
struct Lab {
    /// Host namespaces, host 0 first (the body runs there). Empty for [`Setup::Loopback`].
    hosts: Vec<String>,
    /// Host `i`'s address is `10.99.<subnet>.<i+1>`.
    subnet: u8,
}

impl Lab {
    fn addr(&self, i: usize) -> String {
        format!("10.99.{}.{}", self.subnet, i + 1)
    }

    /// The command prefix that runs a program on host `i`.
    fn on_host(&self, i: usize) -> Vec<String> {
        ["ip", "netns", "exec", &self.hosts[i]]
            .map(String::from)
            .to_vec()
    }
}

/// Runs `body` inside fresh namespaces (see the module doc). `test` is the test's own
/// function name, which the re-run selects.
fn in_namespaces<F: Future<Output = ()>>(test: &str, setup: Setup, body: impl FnOnce(Lab) -> F) {
    if let Some(value) = inside_netns() {
        assert_in_test_netns();
        // "SUBNET HOST0 HOST1 ..." (see below).
        let mut words = value.split_whitespace();
        let subnet = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let hosts = words.map(String::from).collect();
        let lab = Lab { hosts, subnet };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(body(lab));
        return;
    }
    match setup {
        Setup::Loopback => {
            let ns = NetNs::new("mdns");
            rerun_inside(&ns, test, "0", INNER_TIMEOUT);
        }
        Setup::Lan(n) => {
            let lan = Lan::new(n);
            let names: Vec<&str> = lan.hosts.iter().map(|h| h.name.as_str()).collect();
            let value = format!("{} {}", lan.subnet, names.join(" "));
            rerun_inside(&lan.hosts[0], test, &value, INNER_TIMEOUT);
        }
    }
}

/// `MLMESH_*` settings of a node process with mDNS on `iface` and no seeds.
fn mdns_env(name: &str, mesh: &str, iface: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MLMESH_NODE__NAME", name.into()),
        ("MLMESH_NODE__MESH", mesh.into()),
        ("MLMESH_DISCOVERY__MDNS", "true".into()),
        ("MLMESH_DISCOVERY__MDNS_INTERFACES", iface.into()),
    ]
}

/// A node process on loopback with mDNS on `lo`, default heartbeat (1 s).
fn loopback_node(name: &str, mesh: &str) -> ChildNode {
    ChildNode::spawn(&mdns_env(name, mesh, "lo"), &[])
}

/// Each node's peer ids, as its `sys.describe` lists them (`None`: it did not answer).
async fn views(nodes: &[&ChildNode]) -> Vec<Option<BTreeSet<NodeId>>> {
    let calls = nodes.iter().map(|n| describe_of(&n.rpc));
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|d| d.map(|d| d.peers.iter().map(|p| p.id).collect()))
        .collect()
}

/// What each node should see: every other node of `group`.
fn others(group: &[&ChildNode]) -> Vec<Option<BTreeSet<NodeId>>> {
    group
        .iter()
        .map(|me| {
            Some(
                group
                    .iter()
                    .filter(|n| n.id != me.id)
                    .map(|n| n.id)
                    .collect(),
            )
        })
        .collect()
}

/// Polls the nodes' peer lists until they are `want`; panics naming `what` (and showing
/// the last lists) after `timeout`.
async fn wait_views(
    what: &str,
    timeout: Duration,
    nodes: &[&ChildNode],
    want: &[Option<BTreeSet<NodeId>>],
) {
    let start = Instant::now();
    loop {
        let got = views(nodes).await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}: got {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An mdns-sd browser of the test's own: what the link carries, record by record.
struct Browser {
    daemon: ServiceDaemon,
    events: mdns_sd::Receiver<ServiceEvent>,
    /// Instance full name -> its TXT `mesh`, for every record resolved so far.
    resolved: HashMap<String, String>,
    /// Instances whose removal was announced or detected.
    removed: BTreeSet<String>,
}

impl Browser {
    /// Browses `_mlmesh._tcp.local.` on `iface`, IPv4 only, as the runtime does.
    fn new(iface: &str) -> Browser {
        let daemon = ServiceDaemon::new().expect("mdns daemon");
        daemon.disable_interface(IfKind::All).expect("disable all");
        if iface == "lo" {
            daemon
                .enable_interface(IfKind::LoopbackV4)
                .expect("enable loopback");
        }
        daemon
            .enable_interface(IfKind::Name(iface.into()))
            .expect("enable interface");
        let events = daemon.browse(MDNS_SERVICE_TYPE).expect("browse");
        Browser {
            daemon,
            events,
            resolved: HashMap::new(),
            removed: BTreeSet::new(),
        }
    }

    /// Takes in what arrived.
    fn drain(&mut self) -> &mut Self {
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                ServiceEvent::ServiceResolved(svc) => {
                    let mesh = svc.get_property_val_str("mesh").unwrap_or("").to_owned();
                    self.resolved.insert(svc.get_fullname().to_owned(), mesh);
                }
                ServiceEvent::ServiceRemoved(_, name) => {
                    self.removed.insert(name);
                }
                _ => {}
            }
        }
        self
    }

    /// The full name of the record of the node with id `id` (resolved so far).
    fn instance_of(&self, id: NodeId) -> Option<String> {
        let hex = id.0.simple().to_string();
        self.resolved.keys().find(|k| k.contains(&hex)).cloned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

#[test]
fn three_nodes_discover_each_other_over_mdns() {
    in_namespaces(
        "three_nodes_discover_each_other_over_mdns",
        Setup::Loopback,
        |_| async {
            let mesh = unique_mesh();
            let start = Instant::now();
            let (a, b, c) = (
                loopback_node("a", &mesh),
                loopback_node("b", &mesh),
                loopback_node("c", &mesh),
            );
            let ready = start.elapsed();
            let all = [&a, &b, &c];
            wait_views("all three to see the other two", WAIT, &all, &others(&all)).await;
            let discovered = start.elapsed();
            println!(
                "MEASURE mdns three-node discovery: {:.0} ms from the first start \
                 ({:.0} ms after the last node was ready)",
                discovered.as_secs_f64() * 1e3,
                (discovered - ready).as_secs_f64() * 1e3
            );
        },
    );
}

#[test]
fn meshes_with_different_names_stay_apart_on_mdns() {
    in_namespaces(
        "meshes_with_different_names_stay_apart_on_mdns",
        Setup::Loopback,
        |_| async {
            let (mesh_a, mesh_b) = (unique_mesh(), unique_mesh());
            let mut browser = Browser::new("lo");
            let (a1, a2) = (loopback_node("a1", &mesh_a), loopback_node("a2", &mesh_a));
            let (b1, b2) = (loopback_node("b1", &mesh_b), loopback_node("b2", &mesh_b));
            let all = [&a1, &a2, &b1, &b2];
            let mut want = others(&[&a1, &a2]);
            want.extend(others(&[&b1, &b2]));
            wait_views(
                "each node to see its own mesh's other node",
                WAIT,
                &all,
                &want,
            )
            .await;

            // Every node has had both meshes' records on the link (the test's own browser
            // resolves all four), so "apart" is a decision, not a missed packet.
            wait_until("the browser to resolve all four records", WAIT, || {
                let seen = browser.drain();
                all.iter().all(|n| seen.instance_of(n.id).is_some())
            })
            .await;
            let meshes: BTreeSet<_> = browser.resolved.values().cloned().collect();
            assert_eq!(meshes, BTreeSet::from([mesh_a.clone(), mesh_b.clone()]));

            // ...and it stays that way while announcements and resolves keep coming.
            let until = Instant::now() + Duration::from_millis(2500);
            while Instant::now() < until {
                assert_eq!(views(&all).await, want, "a node crossed meshes");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    );
}

#[test]
fn a_crashed_node_leaves_and_its_lingering_record_does_not_bring_it_back() {
    in_namespaces(
        "a_crashed_node_leaves_and_its_lingering_record_does_not_bring_it_back",
        Setup::Loopback,
        |_| async {
            let mesh = unique_mesh();
            let mut browser = Browser::new("lo");
            let (a, b) = (loopback_node("a", &mesh), loopback_node("b", &mesh));
            let mut victim = loopback_node("victim", &mesh);
            let all = [&a, &b, &victim];
            wait_views("all three to see the other two", WAIT, &all, &others(&all)).await;
            wait_until("the browser to resolve the victim", WAIT, || {
                browser.drain().instance_of(victim.id).is_some()
            })
            .await;
            let record = browser.instance_of(victim.id).expect("victim's record");

            // No goodbye: no leaving heartbeat, no mDNS unregister.
            let victim_id = victim.id;
            let killed = Instant::now();
            victim.kill9();
            let survivors = [&a, &b];
            wait_views(
                "the survivors to drop the crashed node",
                Duration::from_secs(3),
                &survivors,
                &others(&survivors),
            )
            .await;
            let left = killed.elapsed();
            println!(
                "MEASURE mdns crash detection (kill -9, 1 s heartbeat): {:.0} ms",
                left.as_secs_f64() * 1e3
            );

            // The next ~2 s: a newcomer joins (queries, announcements, and every browser
            // resolving the live records again) and the test re-browses; the crashed
            // node's record stays cached, but it must never be a peer again.
            let newcomer = loopback_node("newcomer", &mesh);
            browser.daemon.stop_browse(MDNS_SERVICE_TYPE).ok();
            browser.events = browser.daemon.browse(MDNS_SERVICE_TYPE).expect("browse");
            let everyone = [&a, &b, &newcomer];
            let until = Instant::now() + Duration::from_secs(2);
            let mut newcomer_joined = false;
            while Instant::now() < until {
                let got = views(&everyone).await;
                for (node, view) in everyone.iter().zip(&got) {
                    let view = view.as_ref().expect("node answers describe");
                    assert!(
                        !view.contains(&victim_id),
                        "{} lists the crashed node again, {:?} after the kill",
                        node.id,
                        killed.elapsed()
                    );
                }
                newcomer_joined |= got == others(&everyone);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                newcomer_joined,
                "the newcomer never joined: no mDNS traffic"
            );
            let lingers = !browser.drain().removed.contains(&record);
            println!(
                "MEASURE mdns crashed node's record still unremoved {:.1} s after the kill: {lingers}",
                killed.elapsed().as_secs_f64()
            );
        },
    );
}

/// An mDNS removal alone does not remove a live peer (SPEC 6.2): multicast can fail, or
/// a record lapse, while the node and its TCP links are fine. A goodbye for a live node's
/// record (a PTR with TTL 0, as a node unregistering sends) makes its peers' mdns-sd
/// report it removed. The node is held still meanwhile (SIGSTOP, well under its three
/// 2 s heartbeat intervals), so that its own responder cannot announce the record again
/// and bring it back before the caches drop it; thawed, it must still be in the tables.
#[test]
fn an_mdns_removal_alone_does_not_remove_a_live_peer() {
    in_namespaces(
        "an_mdns_removal_alone_does_not_remove_a_live_peer",
        Setup::Loopback,
        |_| async {
            let mesh = unique_mesh();
            let mut browser = Browser::new("lo");
            let a = loopback_node("a", &mesh);
            let mut env = mdns_env("b", &mesh, "lo");
            env.push(("MLMESH_LIVENESS__HEARTBEAT_MS", "2000".into()));
            let b = ChildNode::spawn(&env, &[]);
            let both = [&a, &b];
            wait_views("a and b to see each other", WAIT, &both, &others(&both)).await;
            wait_until("the browser to resolve b", WAIT, || {
                browser.drain().instance_of(b.id).is_some()
            })
            .await;
            let record = browser.instance_of(b.id).expect("b's record");
            signal(b.child.id(), "STOP");
            // Caches drop a record 1 s after its goodbye (RFC 6762, 10.1).
            let frozen = Instant::now();
            within("mdns-sd to report b's record removed", WAIT, async {
                while !browser.drain().removed.contains(&record) {
                    send_goodbye(&record);
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
            })
            .await;
            signal(b.child.id(), "CONT");
            assert!(
                frozen.elapsed() < Duration::from_secs(4),
                "b was held {:?}: too long for this test",
                frozen.elapsed()
            );
            // a has had the removal too; b's heartbeats go on: it must stay.
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                let view = views(&[&a])
                    .await
                    .pop()
                    .flatten()
                    .expect("a answers describe");
                assert!(view.contains(&b.id), "a dropped b on an mDNS removal alone");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    );
}

/// Multicasts on `lo` an mDNS response that says goodbye to `instance`: the PTR
/// `_mlmesh._tcp.local. -> instance` with TTL 0 (RFC 6762, 10.1).
fn send_goodbye(instance: &str) {
    use socket2::{Domain, Protocol, Socket, Type};
    fn name(out: &mut Vec<u8>, dotted: &str) {
        for label in dotted.trim_end_matches('.').split('.') {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
    }
    // Header: id 0, flags "response, authoritative", one answer.
    let mut msg = vec![0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0];
    name(&mut msg, MDNS_SERVICE_TYPE);
    msg.extend_from_slice(&[0, 12, 0, 1, 0, 0, 0, 0]); // PTR, IN, TTL 0
    let mut rdata = Vec::new();
    name(&mut rdata, instance);
    msg.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    msg.extend_from_slice(&rdata);
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("udp socket");
    // mDNS receivers ignore responses whose source port is not 5353 (RFC 6762, 11).
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.set_reuse_port(true).expect("SO_REUSEPORT");
    let from = std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 5353);
    socket.bind(&from.into()).expect("bound to port 5353");
    socket
        .set_multicast_if_v4(&std::net::Ipv4Addr::LOCALHOST)
        .expect("multicast on lo");
    socket.set_multicast_loop_v4(true).expect("multicast loop");
    let to = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(224, 0, 0, 251), 5353);
    socket.send_to(&msg, &to.into()).expect("goodbye sent");
}

/// A node frozen (SIGSTOP) for longer than three heartbeats is dropped by its peers.
/// Thawed, it must be back in their tables: its mDNS record never left their caches, so
/// mdns-sd never resolves it again, and only their second look at peers dropped for
/// silence finds it (SPEC 6.5; before it, the node was never taken back).
#[test]
fn a_frozen_node_is_taken_back_over_mdns_once_thawed() {
    in_namespaces(
        "a_frozen_node_is_taken_back_over_mdns_once_thawed",
        Setup::Loopback,
        |_| async {
            let mesh = unique_mesh();
            let (a, b) = (loopback_node("a", &mesh), loopback_node("b", &mesh));
            let sleeper = loopback_node("sleeper", &mesh);
            let all = [&a, &b, &sleeper];
            wait_views("all three to see the other two", WAIT, &all, &others(&all)).await;

            let stopped = Instant::now();
            signal(sleeper.child.id(), "STOP");
            let awake = [&a, &b];
            wait_views(
                "the others to drop the frozen node",
                WAIT,
                &awake,
                &others(&awake),
            )
            .await;
            let dropped = stopped.elapsed();
            // Frozen a while longer: the peers' first describes of it go unanswered.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let thawed = Instant::now();
            signal(sleeper.child.id(), "CONT");
            wait_views(
                "every table to list the thawed node again",
                WAIT,
                &all,
                &others(&all),
            )
            .await;
            println!(
                "MEASURE mdns frozen node (1 s heartbeat) dropped {:.0} ms after SIGSTOP; \
                 in every table again {:.0} ms after SIGCONT",
                dropped.as_secs_f64() * 1e3,
                thawed.elapsed().as_secs_f64() * 1e3
            );
        },
    );
}

#[test]
fn nodes_on_two_hosts_find_each_other_across_a_bridge() {
    in_namespaces(
        "nodes_on_two_hosts_find_each_other_across_a_bridge",
        Setup::Lan(2),
        |lab| async move {
            let mesh = unique_mesh();
            let start = Instant::now();
            // Host 1: a node process serving `demo.echo`.
            let mut env = mdns_env("remote", &mesh, &Lan::iface(1));
            env.push(("MLMESH_NETWORK__BIND", "0.0.0.0".into()));
            let remote = ChildNode::spawn_via(&lab.on_host(1), &env, &["--echo", "demo.echo"]);
            assert!(
                remote.rpc.starts_with(&format!("tcp://{}:", lab.addr(1))),
                "advertises its segment address: {}",
                remote.rpc
            );
            // Host 0 (here): an in-process node that will call it.
            let mut config = Config::default();
            config.node.name = "local".into();
            config.node.mesh = mesh.clone();
            config.network.bind = std::net::Ipv4Addr::UNSPECIFIED;
            config.discovery.mdns = true;
            config.discovery.mdns_interfaces = vec![Lan::iface(0)];
            let local = Node::builder(config).spawn().await.expect("node starts");
            assert!(local
                .endpoints()
                .rpc
                .starts_with(&format!("tcp://{}:", lab.addr(0))));

            wait_until("the local node to see the remote one", WAIT, || {
                local.peers().iter().any(|p| p.id == remote.id)
            })
            .await;
            let deadline = Instant::now() + WAIT;
            loop {
                let view = describe_of(&remote.rpc).await;
                if view.is_some_and(|d| d.peers.iter().any(|p| p.id == local.id())) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the remote node never saw the local one"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let discovered = start.elapsed();
            let peer = local.peers().into_iter().find(|p| p.id == remote.id);
            let peer = peer.expect("remote is a peer");
            assert_eq!(
                peer.endpoints.rpc, remote.rpc,
                "dialled at its segment address"
            );
            // No seeds: whichever node resolved the other first named itself in its
            // describe call, which introduced it to the other.
            assert!(
                matches!(peer.via, Via::Mdns | Via::Introduction),
                "{:?}",
                peer.via
            );

            let payload =
                Bytes::from(mlmesh::protocol::to_payload(&"across the bridge").expect("enc"));
            let called = Instant::now();
            let reply = local
                .request_raw(
                    "demo.echo",
                    payload.clone(),
                    CallOptions::default().deadline(Duration::from_secs(3)),
                )
                .await
                .expect("echo across hosts");
            assert_eq!(reply, payload);
            println!(
                "MEASURE mdns two-host discovery across a bridge: {:.0} ms (both directions); \
                 first echo round trip {:.1} ms",
                discovered.as_secs_f64() * 1e3,
                called.elapsed().as_secs_f64() * 1e3
            );
            local.shutdown().await;
        },
    );
}
