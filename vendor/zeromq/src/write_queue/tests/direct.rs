//! `SocketOptions::direct_writes` (mlmesh patch, PATCHES.md 11) over real TCP sockets.

use crate::{
    async_rt, DealerSocket, RouterSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage,
};
use std::time::Duration;

/// A ROUTER, and a DEALER with direct writes connected to it.
async fn pair() -> (RouterSocket, DealerSocket) {
    let mut router = RouterSocket::new();
    let endpoint = router.bind("tcp://127.0.0.1:0").await.expect("bind");
    let mut options = SocketOptions::default();
    options.direct_writes(true);
    let mut dealer = DealerSocket::with_options(options);
    dealer
        .connect(&endpoint.to_string())
        .await
        .expect("connect");
    (router, dealer)
}

async fn recv_within(router: &mut RouterSocket, secs: u64) -> ZmqMessage {
    async_rt::task::timeout(Duration::from_secs(secs), router.recv())
        .await
        .expect("a message in time")
        .expect("a message")
}

#[async_rt::test]
async fn test_direct_writes_keep_order_with_queued_sends() {
    let (mut router, dealer) = pair().await;
    let (mut send, _recv) = dealer.split();
    // Runs of `send` (queued for the writer task, which has not run yet when the next
    // message comes) and `try_send` (written directly when nothing is queued) interleave:
    // a direct write must not overtake a queued message.
    let n = 3000u32;
    for i in 0..n {
        let msg = ZmqMessage::from(format!("m{i}"));
        if (i / 7) % 2 == 0 {
            send.send(msg).await.expect("send");
        } else if let Some(msg) = send.try_send(msg).expect("try_send") {
            send.send(msg).await.expect("send");
        }
    }
    for i in 0..n {
        let got = recv_within(&mut router, 5).await;
        let body = got.iter().last().expect("a frame");
        assert_eq!(body, &bytes::Bytes::from(format!("m{i}")));
    }
}

#[async_rt::test]
async fn test_a_direct_write_the_socket_cannot_take_is_finished_by_the_writer_task() {
    let (mut router, dealer) = pair().await;
    let (send, _recv) = dealer.split();
    // More than the kernel's socket buffers hold while nobody reads: the direct write
    // leaves the rest buffered, and nothing else is sent after it, so only the writer
    // task, told to flush, can finish it.
    let body = bytes::Bytes::from(vec![7u8; 48 << 20]);
    let left = send
        .try_send(ZmqMessage::from(body.clone()))
        .expect("try_send");
    assert!(left.is_none(), "written directly (nothing was queued)");
    let got = recv_within(&mut router, 20).await;
    assert_eq!(got.iter().last().expect("a frame"), &body);
}
