use futures_util::{AsyncReadExt, AsyncWriteExt};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

/// A listening `Lanes` on loopback, and the chunk links and have feeds it hands out.
async fn listening() -> (
    Lanes,
    SocketAddr,
    mpsc::Receiver<NetworkEvent>,
    CancellationToken,
) {
    let lanes = Lanes::default();
    let (events, received) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let bound = lanes
        .listen("127.0.0.1:0".parse().unwrap(), events, shutdown.clone())
        .await
        .unwrap();
    (lanes, bound, received, shutdown)
}

/// Connects a lane for `lane_use` as `peer` would, with the token of a fresh offer, and
/// exchanges a request and an answer on it; the event the listener handed the lane out as.
async fn connect_and_talk(lane_use: LaneUse) -> NetworkEvent {
    let (lanes, bound, mut events, shutdown) = listening().await;
    let peer = PeerId::random();
    let offer = lanes.offer(peer, lane_use).unwrap();
    assert_eq!(offer.port, bound.port());
    let mut tcp = TcpStream::connect(bound).await.unwrap();
    tcp.write_all(&offer.token).await.unwrap();
    let mut asker = SealedStream::new(tcp, &offer.keys, End::Asker, &ChunkBuffers::default());
    let mut event = events.recv().await.expect("no lane handed out");
    let (NetworkEvent::ChunkStream { peer: from, stream }
    | NetworkEvent::FeedStream { peer: from, stream }) = &mut event
    else {
        panic!("not a lane: {event:?}");
    };
    assert_eq!(*from, peer);
    asker.write_all(b"request").await.unwrap();
    asker.flush().await.unwrap();
    let mut request = [0u8; 7];
    stream.read_exact(&mut request).await.unwrap();
    assert_eq!(&request, b"request");
    stream.write_all(b"answer").await.unwrap();
    stream.flush().await.unwrap();
    let mut answer = [0u8; 6];
    asker.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"answer");
    shutdown.cancel();
    event
}

#[tokio::test]
async fn a_live_token_makes_the_connection_that_peers_lane_for_what_its_offer_was_for() {
    let chunks = connect_and_talk(LaneUse::Chunks).await;
    assert!(
        matches!(chunks, NetworkEvent::ChunkStream { .. }),
        "{chunks:?}"
    );
    let feed = connect_and_talk(LaneUse::Feed).await;
    assert!(matches!(feed, NetworkEvent::FeedStream { .. }), "{feed:?}");
}

#[tokio::test]
async fn a_token_is_good_once_and_a_wrong_one_is_closed_unread() {
    let (lanes, bound, mut events, shutdown) = listening().await;
    let offer = lanes.offer(PeerId::random(), LaneUse::Chunks).unwrap();
    let mut first = TcpStream::connect(bound).await.unwrap();
    first.write_all(&offer.token).await.unwrap();
    assert!(events.recv().await.is_some());
    let mut forged = offer.token;
    forged[0] ^= 1;
    for token in [offer.token, forged] {
        let mut again = TcpStream::connect(bound).await.unwrap();
        again.write_all(&token).await.unwrap();
        let closed = again.read(&mut [0u8; 1]).await;
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    }
    assert!(events.try_recv().is_err());
    shutdown.cancel();
}

#[test]
fn an_offer_expires() {
    let lanes = Lanes::default();
    lanes.lock().port = Some(4051);
    let offer = lanes.offer(PeerId::random(), LaneUse::Chunks).unwrap();
    let mut expired = lanes.lock().offers.remove(&offer.token).unwrap();
    expired.expires = Instant::now() - Duration::from_secs(1);
    lanes.lock().offers.insert(offer.token, expired);
    assert!(lanes.redeem(&offer.token).is_none());
}

#[test]
fn a_node_without_a_listener_offers_nothing() {
    assert!(
        Lanes::default()
            .offer(PeerId::random(), LaneUse::Chunks)
            .is_none()
    );
}

#[test]
fn waiting_offers_are_bounded_and_the_oldest_go_first() {
    let lanes = Lanes::default();
    lanes.lock().port = Some(4051);
    let first = lanes.offer(PeerId::random(), LaneUse::Chunks).unwrap();
    for _ in 0..OFFERS_MAX {
        lanes.offer(PeerId::random(), LaneUse::Chunks).unwrap();
    }
    assert_eq!(lanes.lock().offers.len(), OFFERS_MAX);
    assert!(lanes.redeem(&first.token).is_none());
}

#[test]
fn a_peer_that_gave_no_lane_is_not_asked_again_for_a_while() {
    let lanes = Lanes::default();
    let peer = PeerId::random();
    assert!(lanes.expected(&peer, LaneUse::Chunks));
    lanes.give_up_on(peer, LaneUse::Chunks, "test");
    assert!(!lanes.expected(&peer, LaneUse::Chunks));
    lanes
        .lock()
        .without
        .insert((peer, LaneUse::Chunks), Instant::now());
    assert!(lanes.expected(&peer, LaneUse::Chunks));
}

#[test]
fn a_peer_without_feed_lanes_still_gets_asked_for_chunk_lanes() {
    let lanes = Lanes::default();
    let peer = PeerId::random();
    lanes.give_up_on(peer, LaneUse::Feed, "an older node");
    assert!(!lanes.expected(&peer, LaneUse::Feed));
    assert!(lanes.expected(&peer, LaneUse::Chunks));
}

#[test]
fn the_address_of_a_connection_is_its_ip() {
    let lanes = Lanes::default();
    let peer = PeerId::random();
    lanes.connected(peer, &"/ip4/10.1.2.3/udp/4050/quic-v1".parse().unwrap());
    assert_eq!(
        lanes.lock().addresses.get(&peer),
        Some(&"10.1.2.3".parse::<IpAddr>().unwrap())
    );
    lanes.disconnected(&peer);
    assert!(lanes.lock().addresses.is_empty());
}

/// Runs [`ask_until_answered`] over `answers` in turn; what it returned, how many it asked,
/// and how long it rested in all.
async fn ask_through(answers: Vec<Result<u8, NoLane>>) -> (Result<u8, String>, usize, Duration) {
    let answers = std::cell::RefCell::new(answers.into_iter());
    let asked = std::cell::Cell::new(0);
    let start = tokio::time::Instant::now();
    let outcome = ask_until_answered(|| {
        asked.set(asked.get() + 1);
        let answer = answers.borrow_mut().next().expect("asked too often");
        async move { answer }
    })
    .await;
    (outcome, asked.get(), start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_dropped_request_for_a_lane_is_asked_again_after_a_growing_rest() {
    let (outcome, asked, rested) =
        ask_through(vec![Err(NoLane::Dropped), Err(NoLane::Dropped), Ok(7)]).await;
    assert_eq!(outcome, Ok(7));
    assert_eq!(asked, 3);
    assert_eq!(rested, FIRST_REST * 3);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_drops_every_request_is_asked_a_bounded_number_of_times() {
    let drops = (0..ASKS_MAX).map(|_| Err(NoLane::Dropped)).collect();
    let (outcome, asked, _) = ask_through(drops).await;
    assert!(outcome.unwrap_err().contains("dropped every request"));
    assert_eq!(asked, ASKS_MAX as usize);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_not_asked_again() {
    let (outcome, asked, rested) =
        ask_through(vec![Err(NoLane::Refused("no lane protocol".into())), Ok(1)]).await;
    assert_eq!(outcome, Err("no lane protocol".to_owned()));
    assert_eq!((asked, rested), (1, Duration::ZERO));
}

#[test]
fn a_stream_closed_before_the_offer_was_dropped_and_other_errors_refuse() {
    let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
    assert!(matches!(no_offer(eof), NoLane::Dropped));
    let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    assert!(matches!(no_offer(reset), NoLane::Refused(why) if why.starts_with("no offer")));
}
