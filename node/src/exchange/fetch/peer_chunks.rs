//! What a transfer knows of its peers' chunks: each peer's bitfield as the transfer's scheduler
//! holds it (from `Have` answers and pushes on the peer's have feed), shared with this node's
//! have feeds
//! (`exchange/feed.rs`), which push a gain to a watcher only if it is news to it
//! (`shoal_protocol::feed::news_for`). A peer that lacks the blob, or was dropped, is
//! forgotten: a feed then pushes every gain to it, as it would without this.

use std::collections::HashMap;
use std::sync::Mutex;

use libp2p::PeerId;
use shoal_protocol::Bitmap;

#[derive(Debug, Default)]
pub struct PeerChunks {
    chunks: Mutex<HashMap<PeerId, Bitmap>>,
}

impl PeerChunks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Bitmap>> {
        self.chunks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The scheduler holds `chunks` for `peer`, or (`None`) does not know it: the peer lacks
    /// the blob, was banned, or the scheduler has not begun.
    pub fn told(&self, peer: PeerId, chunks: Option<Bitmap>) {
        let mut known = self.lock();
        match chunks {
            Some(chunks) => {
                known.insert(peer, chunks);
            }
            None => {
                known.remove(&peer);
            }
        }
    }

    pub fn forget(&self, peer: &PeerId) {
        self.lock().remove(peer);
    }

    /// Forgets every peer not in `connected`.
    pub fn keep_only(&self, connected: &[PeerId]) {
        self.lock().retain(|peer, _| connected.contains(peer));
    }

    /// Whether a watch that last told `peer` of `pushed` has news for it in `have`.
    pub fn news_for(&self, peer: &PeerId, pushed: Option<&Bitmap>, have: &Bitmap) -> bool {
        shoal_protocol::feed::news_for(pushed, have, self.lock().get(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(len: u32, ones: &[u32]) -> Bitmap {
        Bitmap::with_ones(len, ones.iter().copied())
    }

    #[test]
    fn a_gain_the_watcher_holds_is_no_news_until_it_is_forgotten() {
        let known = PeerChunks::default();
        let peer = PeerId::random();
        let pushed = bits(8, &[0]);
        let have = bits(8, &[0, 3]);
        assert!(
            known.news_for(&peer, Some(&pushed), &have),
            "nothing known of it"
        );
        known.told(peer, Some(bits(8, &[3, 5])));
        assert!(
            !known.news_for(&peer, Some(&pushed), &have),
            "it holds chunk 3"
        );
        assert!(
            known.news_for(&peer, Some(&pushed), &bits(8, &[0, 3, 4])),
            "chunk 4 it may lack"
        );
        assert!(known.news_for(&peer, None, &have), "a watch's first push");
        known.told(peer, None);
        assert!(
            known.news_for(&peer, Some(&pushed), &have),
            "it lacks the blob now"
        );
        known.told(peer, Some(bits(8, &[3])));
        known.keep_only(&[PeerId::random()]);
        assert!(known.news_for(&peer, Some(&pushed), &have), "disconnected");
        known.told(peer, Some(bits(8, &[3])));
        known.forget(&peer);
        assert!(known.news_for(&peer, Some(&pushed), &have), "dropped");
    }
}
