//! Workload 4: discovery, a new node seeing an existing one (seed, or mDNS on loopback).

use std::time::Instant;

use anyhow::Result;
use bytes::Bytes;
use mlmesh::{Config, Node};
use zeromq::{DealerSocket, Socket, SocketSend, ZmqMessage};

use crate::report::Report;
use crate::requests::Latency;
use crate::{cpu_secs, raw_echo_server, recv_within, run, unique_mesh, wait_peer, Plan, PAYLOAD};

/// Seeded joins against the raw floor (a new DEALER's connect and first echo).
pub(crate) fn discovery(plan: &Plan, report: &mut Report) -> Result<()> {
    let reps = plan.joins;
    eprintln!("discovery: raw DEALER connect + first round trip, {reps} times");
    let raw = run("raw-join", raw_first_contact(reps))?;
    eprintln!("discovery: mlmesh seeded join, {reps} times");
    let mesh = run("mesh-join", mesh_joins(reps, false))?;
    report
        .json
        .push(raw.json("discovery", "raw_connect_first_reply"));
    report.json.push(mesh.json("discovery", "mlmesh_seed"));
    report.discovery = Some((raw, mesh));
    Ok(())
}

/// mDNS joins on loopback (opt-in: name `mdns` on the command line).
pub(crate) fn mdns(plan: &Plan, report: &mut Report) -> Result<()> {
    let reps = plan.joins;
    eprintln!("mdns: mlmesh mDNS join on loopback, {reps} times");
    let mesh = run("mesh-mdns", mesh_joins(reps, true))?;
    report.json.push(mesh.json("discovery", "mlmesh_mdns"));
    report.mdns = Some(mesh);
    Ok(())
}

/// The floor of any discovery: a new DEALER connects and gets its first echo.
async fn raw_first_contact(reps: usize) -> Result<Latency> {
    let (endpoint, server) = raw_echo_server().await?;
    let data = Bytes::from(vec![0xab; PAYLOAD]);
    let mut samples = Vec::new();
    let cpu0 = cpu_secs();
    for _ in 0..reps {
        let t0 = Instant::now();
        let mut dealer = DealerSocket::new();
        dealer.connect(&endpoint).await?;
        dealer.send(ZmqMessage::from(data.clone())).await?;
        recv_within(&mut dealer).await?;
        samples.push(t0.elapsed());
    }
    let cpu = cpu_secs() - cpu0;
    server.abort();
    Ok(Latency::of(samples, cpu))
}

/// Time from spawning node B to B listing A in `peers()`, B found A by seed (mDNS off)
/// or by mDNS on loopback (no seed).
async fn mesh_joins(reps: usize, mdns: bool) -> Result<Latency> {
    let mesh = unique_mesh();
    let config = |name: &str| {
        let mut c = Config::local(name, &mesh);
        c.discovery.mdns = mdns;
        c
    };
    let a = Node::builder(config("bench-a")).spawn().await?;
    let mut samples = Vec::new();
    let cpu0 = cpu_secs();
    for _ in 0..reps {
        let mut c = config("bench-b");
        if !mdns {
            c.discovery.seeds = vec![a.endpoints().rpc.clone()];
        }
        let t0 = Instant::now();
        let b = Node::builder(c).spawn().await?;
        wait_peer(&b, a.id()).await?;
        samples.push(t0.elapsed());
        b.shutdown().await;
    }
    let cpu = cpu_secs() - cpu0;
    a.shutdown().await;
    Ok(Latency::of(samples, cpu))
}
