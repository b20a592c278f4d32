//! The bytes of a piece on their way from the encoder to a node's upload:
//! stripes as they are encoded, then the piece's hash. The encoder runs a
//! few stripes ahead of the fastest upload and no further ([`Pacer`]), so
//! memory stays bounded while slow nodes are not waited for.

use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use loam_common::merkle::MerkleHasher;
use tokio::sync::mpsc;

pub enum FeedItem {
    Data(Bytes),
    /// The piece is complete; this is its hash.
    Hash([u8; 32]),
    /// The piece is complete, and the feed hashes it (sent only to a
    /// [`PieceFeed::hashing`] feed; never returned by [`PieceFeed::next`]).
    End,
}

/// How far each piece's upload has got: bytes handed to QUIC, or `None`
/// once its upload has ended.
pub struct Pacer {
    sent: Mutex<Vec<Option<u64>>>,
    moved: Condvar,
}

impl Pacer {
    pub fn new(pieces: usize) -> Arc<Self> {
        Arc::new(Self {
            sent: Mutex::new(vec![Some(0); pieces]),
            moved: Condvar::new(),
        })
    }

    fn update(&self, piece: usize, value: Option<u64>) {
        let mut sent = self.sent.lock().expect("pacer lock");
        if let Some(slot) = sent.get_mut(piece)
            && slot.is_some()
        {
            *slot = value;
        }
        self.moved.notify_all();
    }

    /// Bytes each piece has handed to QUIC so far, `None` for those whose
    /// upload has ended.
    pub fn progress(&self) -> Vec<Option<u64>> {
        self.sent.lock().expect("pacer lock").clone()
    }

    /// Blocks until some piece still uploading has sent `bytes`; returns
    /// false when none is uploading any more. For the encoder's thread.
    pub fn wait_for(&self, bytes: u64) -> bool {
        let mut sent = self.sent.lock().expect("pacer lock");
        loop {
            let live = sent.iter().flatten();
            if live.clone().next().is_none() {
                return false;
            }
            if live.max().is_some_and(|&s| s >= bytes) {
                return true;
            }
            sent = self.moved.wait(sent).expect("pacer lock");
        }
    }
}

/// The receiving end, owned by one piece upload.
pub struct PieceFeed {
    rx: mpsc::UnboundedReceiver<FeedItem>,
    /// Bytes the piece will have.
    size: usize,
    pace: Option<(Arc<Pacer>, usize)>,
    /// Hashes the data as it is read, for feeds that end with
    /// [`FeedItem::End`].
    hasher: Option<MerkleHasher>,
}

impl PieceFeed {
    /// A channel for piece number `index` of `size` bytes, reporting to
    /// `pacer`.
    pub fn channel(
        size: usize,
        pacer: &Arc<Pacer>,
        index: usize,
    ) -> (mpsc::UnboundedSender<FeedItem>, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        let feed = Self {
            rx,
            size,
            pace: Some((pacer.clone(), index)),
            hasher: None,
        };
        (tx, feed)
    }

    /// Like [`PieceFeed::channel`], for a piece the encoder does not hash:
    /// the feed hashes the data as the upload reads it, and turns the
    /// closing [`FeedItem::End`] into [`FeedItem::Hash`]. A spare piece
    /// whose upload never starts is never hashed.
    pub fn hashing(
        size: usize,
        pacer: &Arc<Pacer>,
        index: usize,
    ) -> (mpsc::UnboundedSender<FeedItem>, Self) {
        let (tx, mut feed) = Self::channel(size, pacer, index);
        feed.hasher = Some(MerkleHasher::new());
        (tx, feed)
    }

    /// A piece that is already whole.
    pub fn whole(data: Bytes, hash: [u8; 32]) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let size = data.len();
        let _ = tx.send(FeedItem::Data(data));
        let _ = tx.send(FeedItem::Hash(hash));
        Self {
            rx,
            size,
            pace: None,
            hasher: None,
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The next item; `None` if the encoder stopped before the hash.
    pub async fn next(&mut self) -> Option<FeedItem> {
        match self.rx.recv().await? {
            FeedItem::Data(data) => {
                if let Some(hasher) = &mut self.hasher {
                    hasher.update(&data);
                }
                Some(FeedItem::Data(data))
            }
            FeedItem::End => self.hasher.take().map(|h| FeedItem::Hash(h.finalize())),
            hash @ FeedItem::Hash(_) => Some(hash),
        }
    }

    /// Reports `bytes` of the piece handed to QUIC.
    pub fn sent(&self, bytes: u64) {
        if let Some((pacer, i)) = &self.pace {
            pacer.update(*i, Some(bytes));
        }
    }
}

impl Drop for PieceFeed {
    fn drop(&mut self) {
        if let Some((pacer, i)) = &self.pace {
            pacer.update(*i, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hashing_feed_hashes_what_it_hands_out() {
        let pacer = Pacer::new(2);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let (tx, mut feed) = PieceFeed::hashing(data.len(), &pacer, 0);
        for part in data.chunks(65_000) {
            tx.send(FeedItem::Data(Bytes::copy_from_slice(part)))
                .expect("send");
        }
        tx.send(FeedItem::End).expect("send");
        let mut got = Vec::new();
        let hash = loop {
            match feed.next().await {
                Some(FeedItem::Data(d)) => got.extend_from_slice(&d),
                Some(FeedItem::Hash(h)) => break h,
                Some(FeedItem::End) | None => panic!("the feed ended without a hash"),
            }
        };
        assert_eq!(got, data);
        assert_eq!(hash, loam_common::merkle::root(&data));
        // A plain feed has no hash to give for `End`: it reads as ended early.
        let (tx, mut plain) = PieceFeed::channel(1, &pacer, 1);
        tx.send(FeedItem::End).expect("send");
        assert!(plain.next().await.is_none());
        assert_eq!(pacer.progress(), vec![Some(0), Some(0)]);
        drop(feed);
        assert_eq!(pacer.progress(), vec![None, Some(0)]);
    }

    #[test]
    fn the_encoder_waits_for_the_fastest_live_piece_only() {
        let pacer = Pacer::new(3);
        let (_a, fast) = PieceFeed::channel(10, &pacer, 0);
        let (_b, slow) = PieceFeed::channel(10, &pacer, 1);
        let (_c, gone) = PieceFeed::channel(10, &pacer, 2);
        gone.sent(100);
        drop(gone);
        slow.sent(1);
        let waiter = {
            let pacer = pacer.clone();
            std::thread::spawn(move || pacer.wait_for(5))
        };
        // An ended piece's progress does not count: still waiting.
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished());
        fast.sent(5);
        assert!(waiter.join().expect("join"));
        drop((fast, slow));
        assert!(!pacer.wait_for(1_000), "no live piece: no wait");
    }
}
