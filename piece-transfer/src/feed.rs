//! The bytes of a piece on their way from the encoder to a node's upload:
//! stripes as they are encoded, then the piece's hash. The encoder runs a
//! few stripes ahead of the fastest upload and no further ([`Pacer`]), so
//! memory stays bounded while slow nodes are not waited for.

use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

pub enum FeedItem {
    Data(Bytes),
    /// The piece is complete; this is its hash.
    Hash([u8; 32]),
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
        };
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
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The next item; `None` if the encoder stopped before the hash.
    pub async fn next(&mut self) -> Option<FeedItem> {
        self.rx.recv().await
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
