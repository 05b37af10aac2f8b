//! The downlink readiness of the pool against a scripted broker: the test holds the SUBACK
//! back, which no real broker lets one do.

use rumqttc::mqttbytes::v4::{ConnAck, SubAck, SubscribeReasonCode};
use tokio::net::TcpListener;

use super::*;

/// Reads the subscriber connection's CONNECT and SUBSCRIBE; answers the CONNACK only.
/// Returns the SUBSCRIBE's packet id and filter count.
async fn accept_unsubscribed(listener: &TcpListener) -> (TcpStream, u16, usize) {
    let (mut socket, _) = listener.accept().await.unwrap();
    let mut buffer = BytesMut::new();
    let connect = read_packet(&mut socket, &mut buffer, 4096).await.unwrap();
    assert!(matches!(connect, Packet::Connect(..)), "{connect:?}");
    let Packet::Subscribe(subscribe) = read_packet(&mut socket, &mut buffer, 4096).await.unwrap()
    else {
        panic!("the subscriber connection subscribes right after CONNECT");
    };
    let mut out = BytesMut::new();
    encode(
        &Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
        &mut out,
    )
    .unwrap();
    socket.write_all(&out).await.unwrap();
    (socket, subscribe.pkid, subscribe.filters.len())
}

async fn ready_within(pool: &Pool, within: Duration) -> bool {
    tokio::time::timeout(within, pool.downlink_ready())
        .await
        .is_ok()
}

#[tokio::test]
async fn the_downlink_is_ready_only_while_its_subscription_stands() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stop = CancellationToken::new();
    let login = InternalLogin {
        username: "gateway".into(),
        password: "secret".into(),
    };
    let pool = Pool::start(
        listener.local_addr().unwrap(),
        &login,
        1,
        Arc::default(),
        Arc::default(),
        &stop,
    );

    // Connected, SUBACK not yet sent: devices must still wait.
    let (mut socket, pkid, filters) = accept_unsubscribed(&listener).await;
    assert!(!ready_within(&pool, Duration::from_millis(300)).await);

    let mut out = BytesMut::new();
    let granted = vec![SubscribeReasonCode::Success(QoS::AtLeastOnce); filters];
    encode(&Packet::SubAck(SubAck::new(pkid, granted)), &mut out).unwrap();
    socket.write_all(&out).await.unwrap();
    assert!(ready_within(&pool, Duration::from_secs(5)).await);

    // The connection drops: not ready again until the new connection is subscribed (the
    // pool reconnects only after it noticed the loss).
    drop(socket);
    let (socket, _, _) = accept_unsubscribed(&listener).await;
    assert!(!ready_within(&pool, Duration::from_millis(300)).await);
    drop(socket);
    stop.cancel();
}
