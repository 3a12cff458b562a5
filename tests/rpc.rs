//! Instructions and acks between real nodes on loopback.

mod common;

use std::time::Duration;

use common::*;
use mlmesh::{CallOptions, Code, Node, Status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_acknowledged_by_a_seeded_provider() {
    init_tracing();
    let mesh = unique_mesh();
    let provider = Node::builder(local("provider", &mesh))
        .handle("math.add", |v: (i64, i64), _| async move {
            Ok::<_, Status>(v.0 + v.1)
        })
        .spawn()
        .await
        .expect("provider starts");
    let caller = plain(seeded("caller", &mesh, &provider)).await;
    wait_peers(&caller, 1).await;
    let sum: i64 = caller.request("math.add", &(40, 2)).await.expect("ack");
    assert_eq!(sum, 42);
    let err = caller
        .request::<_, i64>("math.sub", &(1, 2))
        .await
        .expect_err("nobody serves math.sub");
    assert_eq!(err.code, Code::NoResponders);
    let err = caller
        .request_with::<_, i64>(
            "math.add",
            &"not a pair",
            CallOptions::default().deadline(Duration::from_secs(2)),
        )
        .await
        .expect_err("malformed payload");
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
    caller.shutdown().await;
    provider.shutdown().await;
}
