//! The peer exchange: how this node gets blobs it lacks and gives peers the blobs it has. The
//! node's driver of it, that is: the libp2p layer underneath ([`crate::network`]: swarm, codec,
//! chunk links, muxer, buffers) moves frames and knows nothing of transfers, and the registry
//! client ([`crate::upstream`]) speaks HTTP and knows nothing of peers.
//!
//! Two sides, and what they share:
//! - [`fetch`] (getting): the `FetchActor` owns the table of transfers, one task
//!   per blob. A transfer asks peers which chunks they have, takes the chunk index from one,
//!   pulls chunks from many at once over their chunk links, checks each chunk's BLAKE3 against
//!   the index as it lands, and bans a peer that sends wrong content. When no peer has the blob
//!   and its origin has an upstream, the transfer downloads it from the registry instead
//!   ([`fetch`]'s `upstream` module). Readers (gateway clients, peers) follow a transfer's
//!   progress and read its verified chunks while it is still arriving.
//! - [`serve`] (giving): answers peers' requests (have, index, chunk, fetch, announcements)
//!   from the store and from transfers in progress, and serves the chunk links peers open to
//!   this node. Chunks go out only once verified, and only as fast as the egress limit allows.
//! - [`feed`] (telling): pushes this node's bitfield of the blobs it is fetching to the
//!   peers that watch them on their have feeds, instead of each peer polling for it.
//! - [`provenance`]: whether content a peer asks for is public or held only because of a
//!   credentialed namespace, for the zone's decisions (`zone.rs`), which [`serve`] applies.
//! - [`pace`]: how fast the node gains chunks over all its transfers, which [`feed`] spaces
//!   its pushes by.
//! - [`seeding`]: the node's handle on the protocol's serving policy
//!   (`shoal_protocol::serving`: super-seeding and the `Busy` rule), which [`serve`] asks
//!   before it reads a chunk; the simulator drives the same policy.
//! - [`rate`]: the egress and ingress token buckets (`--max-egress`, `--max-ingress`,
//!   `--max-site-ingress`) both sides draw from.
//!
//! How bytes flow: peer (or upstream) → network chunk link → `fetch` checks the chunk → the
//! transfer's file and its in-memory verified chunks → gateway readers and [`serve`] (to other
//! peers) → once the whole blob's sha256 matches, the store.

mod feed;
pub mod fetch;
pub mod pace;
pub mod provenance;
pub mod rate;
pub mod seeding;
pub mod serve;
