//! The overlay's records: storage nodes and their reputation.
//!
//! Both are changed only through [`NodeStore::update`] and
//! [`NodeStore::update_reputation`], each one optimistic transaction on the
//! stored record (several satellite processes check nodes in, audit and
//! score them at once; none of their changes is lost). Layout in the
//! backend: `nodes` and `reputation` by node id, protobuf values.

use std::ops::ControlFlow;
use std::sync::Arc;

use loam_common::{NodeId, PublicKey, pb};
use prost::Message;

use super::{decode, walk};
use crate::db::{DbError, Kv, Table, transact};
use crate::overlay::Node;

/// Nodes and reputations over one of the satellite's databases.
pub struct NodeStore {
    kv: Arc<dyn Kv>,
}

impl NodeStore {
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Self { kv }
    }

    /// Calls `f` with every node, a page at a time.
    pub fn for_each_node<E: From<DbError>>(
        &self,
        mut f: impl FnMut(Node) -> Result<(), E>,
    ) -> Result<(), E> {
        walk(&*self.kv, Table::Nodes, b"", b"", |_, v| {
            f(decode_node(&v)?)?;
            Ok(ControlFlow::Continue(()))
        })
    }

    pub fn node(&self, id: &NodeId) -> Result<Option<Node>, DbError> {
        self.kv
            .get(Table::Nodes, id.as_bytes())?
            .map(|v| decode_node(&v))
            .transpose()
    }

    /// Changes node `id`'s record in one transaction on what the database
    /// holds: `change` gets the stored node (`None`: unknown) and returns
    /// the node to store (`None`: store nothing) and its answer. `change`
    /// may run several times.
    pub fn update<T, E: From<DbError>>(
        &self,
        id: &NodeId,
        mut change: impl FnMut(Option<Node>) -> Result<(Option<Node>, T), E>,
    ) -> Result<T, E> {
        transact(self.kv.as_ref(), |txn| {
            let stored = txn
                .get(Table::Nodes, id.as_bytes())?
                .map(|v| decode_node(&v))
                .transpose()?;
            let (write, out) = change(stored)?;
            if let Some(node) = write {
                if node.id != *id {
                    return Err(E::from(DbError::Corrupt("node stored under another id")));
                }
                txn.put(
                    Table::Nodes,
                    id.as_bytes().to_vec(),
                    node_record(&node).encode_to_vec(),
                );
            }
            Ok(out)
        })
    }

    /// A node's reputation, `None` before its first score.
    pub fn reputation(&self, id: &NodeId) -> Result<Option<pb::Reputation>, DbError> {
        self.kv
            .get(Table::Reputation, id.as_bytes())?
            .map(|v| decode(&v, "reputation"))
            .transpose()
    }

    /// Changes a node's reputation in one transaction: `change` gets the
    /// stored record (`None`: none yet) and returns the one to store.
    /// `change` may run several times.
    pub fn update_reputation<E: From<DbError>>(
        &self,
        id: &NodeId,
        mut change: impl FnMut(Option<pb::Reputation>) -> Result<pb::Reputation, E>,
    ) -> Result<pb::Reputation, E> {
        transact(self.kv.as_ref(), |txn| {
            let stored = txn
                .get(Table::Reputation, id.as_bytes())?
                .map(|v| decode(&v, "reputation"))
                .transpose()?;
            let r = change(stored)?;
            txn.put(Table::Reputation, id.as_bytes().to_vec(), r.encode_to_vec());
            Ok(r)
        })
    }
}

fn node_record(n: &Node) -> pb::NodeRecord {
    pb::NodeRecord {
        version: 1,
        public_key: n.public_key.as_bytes().to_vec().into(),
        address: n.address.clone(),
        free_disk: n.free_disk,
        node_version: n.version.clone(),
        last_seen_unix_ms: n.last_seen_ms,
        capabilities: Some(n.capabilities.clone()),
        created_unix_ms: n.created_ms,
        disqualified_unix_ms: n.disqualified_ms.unwrap_or(0),
        exit_started_unix_ms: n.exit_started_ms.unwrap_or(0),
        exit_finished_unix_ms: n.exit_finished_ms.unwrap_or(0),
        vetted: n.vetted,
        suspended_unix_ms: n.suspended_ms.unwrap_or(0),
        wallet: n.wallet.clone(),
        observed_ip: n.observed_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        unreachable: n.unreachable,
    }
}

fn decode_node(v: &[u8]) -> Result<Node, DbError> {
    let r: pb::NodeRecord = decode(v, "node")?;
    let public_key =
        PublicKey::try_from(r.public_key.as_ref()).map_err(|_| DbError::Corrupt("node"))?;
    let when = |ms: i64| (ms > 0).then_some(ms);
    Ok(Node {
        id: public_key.node_id(),
        public_key,
        address: r.address,
        free_disk: r.free_disk,
        version: r.node_version,
        last_seen_ms: r.last_seen_unix_ms,
        created_ms: r.created_unix_ms,
        capabilities: r.capabilities.unwrap_or_default(),
        disqualified_ms: when(r.disqualified_unix_ms),
        exit_started_ms: when(r.exit_started_unix_ms),
        exit_finished_ms: when(r.exit_finished_unix_ms),
        vetted: r.vetted,
        suspended_ms: when(r.suspended_unix_ms),
        wallet: r.wallet,
        observed_ip: r.observed_ip.parse().ok(),
        unreachable: r.unreachable,
    })
}

/// One suite for nodes and reputations on every backend; several stores
/// on one database stand for several satellite processes.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::satellitedb::backends;

    fn node(free_disk: i64) -> Node {
        let key = loam_common::KeyPair::generate().public();
        Node {
            id: key.node_id(),
            public_key: key,
            address: "127.0.0.1:7777".into(),
            free_disk,
            version: "1.0".into(),
            last_seen_ms: 5,
            created_ms: 4,
            capabilities: pb::NodeCapabilities {
                cpu_cores: 8,
                ..Default::default()
            },
            disqualified_ms: None,
            exit_started_ms: Some(9),
            exit_finished_ms: None,
            vetted: true,
            suspended_ms: Some(11),
            wallet: String::new(),
            observed_ip: Some("127.0.0.2".parse().expect("ip")),
            unreachable: true,
        }
    }

    fn conformance(stores: &[NodeStore]) {
        let first = &stores[0];
        let n = node(100);
        // Unknown: the change sees nothing, and storing nothing stores
        // nothing.
        let seen = first
            .update(&n.id, |stored| Ok::<_, DbError>((None, stored.is_some())))
            .expect("update");
        assert!(!seen);
        assert!(first.node(&n.id).expect("read").is_none());
        first
            .update(&n.id, |_| Ok::<_, DbError>((Some(n.clone()), ())))
            .expect("store");
        let back = first.node(&n.id).expect("read").expect("there");
        assert_eq!(
            node_record(&back),
            node_record(&n),
            "every field round-trips"
        );
        // A node is stored under its own id only.
        let other = node(1);
        let wrong = first.update(&n.id, |_| Ok::<_, DbError>((Some(other.clone()), ())));
        assert!(matches!(wrong, Err(DbError::Corrupt(_))));

        // Writers in every "process" at once: no change is lost.
        const EACH: i64 = 25;
        std::thread::scope(|s| {
            for store in stores {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..EACH {
                            store
                                .update(&n.id, |stored| {
                                    let mut node = stored.expect("known");
                                    node.free_disk += 1;
                                    Ok::<_, DbError>((Some(node), ()))
                                })
                                .expect("update");
                            store
                                .update_reputation(&n.id, |r| {
                                    let mut r = r.unwrap_or_default();
                                    r.audits += 1;
                                    Ok::<_, DbError>(r)
                                })
                                .expect("score");
                        }
                    });
                }
            }
        });
        let writers = 2 * stores.len() as i64;
        let last = stores[stores.len() - 1]
            .node(&n.id)
            .expect("read")
            .expect("there");
        assert_eq!(last.free_disk, 100 + writers * EACH);
        let r = first.reputation(&n.id).expect("read").expect("scored");
        assert_eq!(r.audits as i64, writers * EACH);
        assert!(first.reputation(&other.id).expect("read").is_none());

        let mut all = Vec::new();
        first
            .update(&other.id, |_| Ok::<_, DbError>((Some(other.clone()), ())))
            .expect("store");
        first
            .for_each_node(|node| {
                all.push(node.id);
                Ok::<_, DbError>(())
            })
            .expect("walk");
        all.sort();
        let mut want = vec![n.id, other.id];
        want.sort();
        assert_eq!(all, want);
    }

    #[test]
    fn memory_backend() {
        let kv = backends::memory();
        conformance(&[NodeStore::new(kv.clone()), NodeStore::new(kv)]);
    }

    #[test]
    fn rocksdb_backend() {
        backends::rocksdb(|kv| conformance(&[NodeStore::new(kv.clone()), NodeStore::new(kv)]));
    }

    #[test]
    fn postgres_backend() {
        backends::postgres(|connect| {
            conformance(&[NodeStore::new(connect()), NodeStore::new(connect())])
        });
    }
}
