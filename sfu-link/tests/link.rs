//! Real QUIC links on loopback: the handshake's outcomes, and bad frames after it.

use std::net::{Ipv4Addr, SocketAddr};

use sfu_link::LinkError;
use sfu_link::handshake::{self, Established};
use sfu_link::stream::FrameReceiver;
use sfu_link::tls::{self, Identity};
use sfu_proto::{Frame, NodeRequest, Registration, RequestId};

const SECRET: &[u8] = b"a cluster secret of decent length";

fn registration(node: &str) -> Registration {
    Registration {
        node: node.parse().expect("node id"),
        incarnation: 7,
        region: Some("eu".into()),
        media_ip: Ipv4Addr::LOCALHOST.into(),
        media_ports: vec![50000],
        capacity: 100,
        sessions: Vec::new(),
        relay: None,
    }
}

fn server(identity: &Identity) -> quinn::Endpoint {
    quinn::Endpoint::server(
        tls::server_config(identity).expect("server config"),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )
    .expect("server endpoint")
}

async fn connect(
    server: &quinn::Endpoint,
    pinned: &Identity,
) -> Result<quinn::Connection, LinkError> {
    let mut client =
        quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("client");
    client.set_default_client_config(tls::client_config(pinned.cert.clone()).expect("config"));
    let addr = server.local_addr().expect("addr");
    Ok(client.connect(addr, tls::SERVER_NAME)?.await?)
}

/// Control's side of one link: accept a connection and run the handshake.
async fn accept_one(
    server: quinn::Endpoint,
    secret: &'static [u8],
) -> Result<(Registration, Established), LinkError> {
    let incoming = server.accept().await.expect("a connection");
    let connection = incoming.await?;
    let result = handshake::accept(&connection, secret, |r| {
        if r.node.as_str() == "taken" {
            Err("node id \"taken\" is held by a live node".into())
        } else {
            Ok(())
        }
    })
    .await;
    // Keep the connection open until the node has read the verdict.
    if result.is_err() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    result
}

#[tokio::test]
async fn a_node_with_the_secret_registers_and_requests_flow() {
    let identity = Identity::generate(vec!["localhost".into()]).expect("identity");
    let endpoint = server(&identity);
    let control = tokio::spawn(accept_one(endpoint.clone(), SECRET));
    let connection = connect(&endpoint, &identity).await.expect("connect");
    let mut node = handshake::register(&connection, SECRET, registration("n1"))
        .await
        .expect("registered");
    let (seen, mut control_side) = control.await.expect("task").expect("accepted");
    assert_eq!(seen, registration("n1"));

    control_side
        .sender
        .send(&Frame::Request {
            id: RequestId(1),
            request: NodeRequest::Stats,
        })
        .await
        .expect("send");
    assert_eq!(
        node.receiver.next().await.expect("a frame"),
        Frame::Request {
            id: RequestId(1),
            request: NodeRequest::Stats
        }
    );
}

#[tokio::test]
async fn a_wrong_secret_is_refused_and_told_why() {
    let identity = Identity::generate(vec!["localhost".into()]).expect("identity");
    let endpoint = server(&identity);
    let control = tokio::spawn(accept_one(endpoint.clone(), SECRET));
    let connection = connect(&endpoint, &identity).await.expect("connect");
    let err = handshake::register(&connection, b"not the cluster secret!", registration("n1"))
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, LinkError::Refused(r) if r.contains("secret")),
        "{err}"
    );
    let control_err = control.await.expect("task").expect_err("refused");
    assert!(
        matches!(control_err, LinkError::Refused(_)),
        "{control_err}"
    );
}

#[tokio::test]
async fn a_taken_node_id_is_refused() {
    let identity = Identity::generate(vec!["localhost".into()]).expect("identity");
    let endpoint = server(&identity);
    let control = tokio::spawn(accept_one(endpoint.clone(), SECRET));
    let connection = connect(&endpoint, &identity).await.expect("connect");
    let err = handshake::register(&connection, SECRET, registration("taken"))
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, LinkError::Refused(r) if r.contains("held by a live node")),
        "{err}"
    );
    control.await.expect("task").expect_err("refused");
}

#[tokio::test]
async fn a_node_refuses_a_control_with_another_certificate() {
    let real = Identity::generate(vec!["localhost".into()]).expect("identity");
    let impostor = Identity::generate(vec!["localhost".into()]).expect("identity");
    let endpoint = server(&impostor);
    let control = tokio::spawn({
        let endpoint = endpoint.clone();
        async move {
            endpoint
                .accept()
                .await
                .expect("an attempt")
                .await
                .map(|_| ())
        }
    });
    let err = connect(&endpoint, &real)
        .await
        .expect_err("an unpinned certificate");
    assert!(
        matches!(&err, LinkError::Connection(quinn::ConnectionError::TransportError(e)) if e.to_string().contains("certificate")),
        "{err}"
    );
    assert!(control.await.expect("task").is_err());
}

#[tokio::test]
async fn malformed_frames_are_skipped_and_an_oversized_one_ends_the_stream() {
    let identity = Identity::generate(vec!["localhost".into()]).expect("identity");
    let endpoint = server(&identity);
    let control = tokio::spawn({
        let endpoint = endpoint.clone();
        async move {
            let connection = endpoint.accept().await.expect("a connection").await?;
            let accepted = handshake::accept(&connection, SECRET, |_| Ok(())).await?;
            Ok::<_, LinkError>((connection, accepted))
        }
    });
    let connection = connect(&endpoint, &identity).await.expect("connect");
    let _node = handshake::register(&connection, SECRET, registration("n1"))
        .await
        .expect("registered");
    let (control_connection, _) = control.await.expect("task").expect("accepted");

    // Raw bytes on a second stream: garbage inside a valid length prefix, a real frame, then
    // a length over the limit.
    let (mut raw, _recv) = connection.open_bi().await.expect("stream");
    let mut bytes = vec![0, 0, 0, 3, 0xff, 0xff, 0xff];
    sfu_proto::frame::encode(&Frame::Registered, 1 << 20, &mut bytes).expect("encode");
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    raw.write_all(&bytes).await.expect("write");
    let (_send, recv) = control_connection
        .accept_bi()
        .await
        .expect("the raw stream");
    let mut receiver = FrameReceiver::<Frame>::new(recv);
    assert_eq!(
        receiver.next().await.expect("the valid frame"),
        Frame::Registered
    );
    assert_eq!(receiver.malformed(), 1);
    let err = receiver.next().await.expect_err("oversized");
    assert!(
        matches!(
            err,
            LinkError::Codec(sfu_proto::CodecError::TooLarge { .. })
        ),
        "{err}"
    );
}
