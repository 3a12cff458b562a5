//! `registry/1` end to end: the behaviour suite (`behaviour/registry.rs`) on a registry
//! node over a real SQLite file in a temporary directory, called by another node over
//! loopback sockets; and the `mlmesh-registry` binary killed with SIGKILL and started
//! again on the same data.

mod common;
#[macro_use]
mod behaviour;

use mlmesh::protocol::registry::{self, AliasAssign, AliasSet, Locate, Located, ModelVersion};
use mlmesh::Node;

use behaviour::registry::{call, version};
use common::Backend;

registry_tests!(Backend::BuiltIn);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_keeps_models_and_aliases_across_kill_9() {
    common::init_tracing();
    let dir = tempfile::tempdir().expect("temp dir");
    let mesh = common::unique_mesh();
    let env = [
        ("MLMESH_STORE__DATA_DIR", dir.path().display().to_string()),
        ("MLMESH_NODE__MESH", mesh.clone()),
        ("MLMESH_NODE__NAME", "registry".to_owned()),
    ];
    let bin = env!("CARGO_BIN_EXE_mlmesh-registry");

    let mut first = common::NodeProc::start(bin, &env);
    let client = Node::builder(first.seed_of("client", &mesh))
        .spawn()
        .await
        .expect("client starts");
    common::wait_alive(&client, first.id).await;
    for i in 1..=2 {
        let v: ModelVersion = call(
            &client,
            registry::VERSION_CREATE,
            &version("fraud", &format!("s3://f/{i}")),
        )
        .await
        .expect("registered");
        assert_eq!(v.version, i);
    }
    let req = AliasAssign {
        name: "fraud".into(),
        alias: "champion".into(),
        version: 1,
    };
    call::<_, AliasSet>(&client, registry::ALIAS_ASSIGN, &req)
        .await
        .expect("alias set");
    first.kill9();
    client.shutdown().await;

    let second = common::NodeProc::start(bin, &env);
    let client = Node::builder(second.seed_of("client2", &mesh))
        .spawn()
        .await
        .expect("client starts");
    common::wait_alive(&client, second.id).await;
    let locate = Locate {
        name: "fraud".into(),
        alias: Some("champion".into()),
        ..Locate::default()
    };
    let at: Located = call(&client, registry::MODEL_LOCATE, &locate)
        .await
        .expect("the alias survived");
    assert_eq!((at.version, at.source.as_str()), (1, "s3://f/1"));
    let v: ModelVersion = call(
        &client,
        registry::VERSION_CREATE,
        &version("fraud", "s3://f/3"),
    )
    .await
    .expect("registered");
    assert_eq!(v.version, 3, "numbers carry on after a restart");
    client.shutdown().await;
    drop(second);
}
