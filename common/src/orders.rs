//! Order limits, orders and piece hashes: the signed statements that say who
//! may move which bytes of which piece, and who pays for them.
//!
//! Every signed statement travels as `{ bytes, signature }` where the
//! signature covers exactly those bytes, which are then decoded into a
//! domain type with [`TryFrom`]: nothing is trusted before the signature
//! checks, and nothing depends on re-encoding being canonical.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::identity::{Domain, IdError, Identity, KeyPair, NodeId, PublicKey};
use crate::pb;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A piece's name on a node.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PieceId([u8; 32]);

impl PieceId {
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The id of piece `num` on `node` of a segment whose root piece id is `root`.
    pub fn derive(root: &PieceId, node: &NodeId, num: u32) -> Self {
        let mut h = blake3::Hasher::new_derive_key("loam piece id v1");
        h.update(&root.0);
        h.update(node.as_bytes());
        h.update(&num.to_be_bytes());
        Self(*h.finalize().as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for PieceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PieceId({})", &self.to_hex()[..12])
    }
}

impl TryFrom<&[u8]> for PieceId {
    type Error = OrderError;

    fn try_from(b: &[u8]) -> Result<Self, Self::Error> {
        b.try_into()
            .map(Self)
            .map_err(|_| OrderError::Malformed("piece id"))
    }
}

/// Unique id of one order limit.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SerialNumber([u8; 16]);

impl SerialNumber {
    pub fn random() -> Self {
        Self(rand::random())
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl TryFrom<&[u8]> for SerialNumber {
    type Error = OrderError;

    fn try_from(b: &[u8]) -> Result<Self, Self::Error> {
        b.try_into()
            .map(Self)
            .map_err(|_| OrderError::Malformed("serial number"))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum PieceAction {
    Put,
    Get,
    GetAudit,
    GetRepair,
    PutRepair,
}

impl PieceAction {
    pub const ALL: [PieceAction; 5] = [
        Self::Put,
        Self::Get,
        Self::GetAudit,
        Self::GetRepair,
        Self::PutRepair,
    ];

    /// The wire (protobuf) value.
    pub fn code(self) -> i32 {
        pb::PieceAction::from(self) as i32
    }

    pub fn is_upload(self) -> bool {
        matches!(self, Self::Put | Self::PutRepair)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Get => "get",
            Self::GetAudit => "get_audit",
            Self::GetRepair => "get_repair",
            Self::PutRepair => "put_repair",
        }
    }
}

impl TryFrom<i32> for PieceAction {
    type Error = OrderError;

    fn try_from(v: i32) -> Result<Self, Self::Error> {
        match pb::PieceAction::try_from(v) {
            Ok(pb::PieceAction::Put) => Ok(Self::Put),
            Ok(pb::PieceAction::Get) => Ok(Self::Get),
            Ok(pb::PieceAction::GetAudit) => Ok(Self::GetAudit),
            Ok(pb::PieceAction::GetRepair) => Ok(Self::GetRepair),
            Ok(pb::PieceAction::PutRepair) => Ok(Self::PutRepair),
            _ => Err(OrderError::Malformed("piece action")),
        }
    }
}

impl From<PieceAction> for pb::PieceAction {
    fn from(a: PieceAction) -> Self {
        match a {
            PieceAction::Put => Self::Put,
            PieceAction::Get => Self::Get,
            PieceAction::GetAudit => Self::GetAudit,
            PieceAction::GetRepair => Self::GetRepair,
            PieceAction::PutRepair => Self::PutRepair,
        }
    }
}

/// Why a node refuses an order limit or order.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OrderError {
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("order limit signature does not verify against the satellite's key")]
    BadSatelliteSignature,
    #[error("order limit was issued by satellite {0}, which this node does not trust")]
    UntrustedSatellite(NodeId),
    #[error("order limit is for node {0}, not this one")]
    WrongNode(NodeId),
    #[error("order limit expired")]
    Expired,
    #[error("order limit serial number was already used")]
    SerialReused,
    #[error("order limit is for {got:?}, this endpoint serves {expected:?}")]
    WrongAction {
        expected: PieceAction,
        got: PieceAction,
    },
    #[error("order amount {amount} exceeds the order limit's {limit} bytes")]
    AmountAboveLimit { amount: u64, limit: u64 },
    #[error("order signature does not verify against the piece public key")]
    BadUplinkSignature,
    #[error("order serial number does not match its order limit")]
    WrongSerial,
    #[error("order amount decreased from {previous} to {amount}")]
    AmountDecreased { previous: u64, amount: u64 },
    #[error("{sent} bytes sent, beyond the {ordered} bytes ordered")]
    BytesBeyondOrder { sent: u64, ordered: u64 },
    #[error("piece hash does not match the data received")]
    HashMismatch,
}

impl OrderError {
    /// The wire reason for this rejection.
    pub fn rejection(&self) -> pb::OrderRejection {
        use pb::OrderRejection as R;
        match self {
            Self::Malformed(_) => R::Malformed,
            Self::BadSatelliteSignature => R::BadSatelliteSignature,
            Self::UntrustedSatellite(_) => R::UntrustedSatellite,
            Self::WrongNode(_) => R::WrongNode,
            Self::Expired => R::Expired,
            Self::SerialReused => R::SerialReused,
            Self::WrongAction { .. } => R::WrongAction,
            Self::AmountAboveLimit { .. } => R::AmountAboveLimit,
            Self::BadUplinkSignature => R::BadUplinkSignature,
            Self::WrongSerial => R::WrongSerial,
            Self::AmountDecreased { .. } => R::AmountDecreased,
            Self::BytesBeyondOrder { .. } => R::BytesBeyondOrder,
            Self::HashMismatch => R::HashMismatch,
        }
    }
}

/// Permission, signed by a satellite, for one transfer of one piece.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderLimit {
    pub serial: SerialNumber,
    pub satellite_id: NodeId,
    pub node_id: NodeId,
    pub piece_id: PieceId,
    pub action: PieceAction,
    /// Most bytes the transfer may move.
    pub limit: u64,
    pub piece_public_key: PublicKey,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// When the stored piece may be deleted; 0 for never.
    pub piece_expires_ms: i64,
    /// Billing metadata sealed by the satellite for itself (opaque here).
    pub metadata: Vec<u8>,
}

impl OrderLimit {
    pub fn sign(&self, satellite: &Identity) -> pb::SignedOrderLimit {
        let bytes = pb::OrderLimit::from(self).encode_to_vec();
        let signature = satellite.sign(Domain::OrderLimit, &bytes);
        pb::SignedOrderLimit {
            limit: bytes.into(),
            signature: signature.into(),
        }
    }

    /// Checks the satellite's signature, then decodes.
    pub fn verify(
        signed: &pb::SignedOrderLimit,
        satellite: &PublicKey,
    ) -> Result<Self, OrderError> {
        satellite
            .verify(Domain::OrderLimit, &signed.limit, &signed.signature)
            .map_err(|_| OrderError::BadSatelliteSignature)?;
        Self::decode_unverified(signed)
    }

    /// Decodes without checking the signature (for routing decisions only).
    pub fn decode_unverified(signed: &pb::SignedOrderLimit) -> Result<Self, OrderError> {
        let wire = pb::OrderLimit::decode(signed.limit.as_ref())
            .map_err(|_| OrderError::Malformed("order limit"))?;
        Self::try_from(&wire)
    }

    /// Checks what the node itself must check: addressed to `me`, not
    /// expired, for the expected action.
    pub fn check(&self, me: &NodeId, action: PieceAction, now_ms: i64) -> Result<(), OrderError> {
        if &self.node_id != me {
            return Err(OrderError::WrongNode(self.node_id));
        }
        if self.expires_ms <= now_ms {
            return Err(OrderError::Expired);
        }
        let ok = match action {
            PieceAction::Put => self.action.is_upload(),
            _ => !self.action.is_upload(),
        };
        if !ok {
            return Err(OrderError::WrongAction {
                expected: action,
                got: self.action,
            });
        }
        Ok(())
    }
}

impl From<&OrderLimit> for pb::OrderLimit {
    fn from(l: &OrderLimit) -> Self {
        Self {
            version: 1,
            serial_number: l.serial.0.to_vec().into(),
            satellite_id: l.satellite_id.as_bytes().to_vec().into(),
            storage_node_id: l.node_id.as_bytes().to_vec().into(),
            piece_id: l.piece_id.0.to_vec().into(),
            action: pb::PieceAction::from(l.action) as i32,
            limit: l.limit as i64,
            piece_public_key: l.piece_public_key.as_bytes().to_vec().into(),
            order_creation_unix_ms: l.created_ms,
            order_expiration_unix_ms: l.expires_ms,
            piece_expiration_unix_ms: l.piece_expires_ms,
            encrypted_metadata: l.metadata.clone().into(),
        }
    }
}

impl TryFrom<&pb::OrderLimit> for OrderLimit {
    type Error = OrderError;

    fn try_from(w: &pb::OrderLimit) -> Result<Self, Self::Error> {
        let id =
            |b: &[u8], what| NodeId::try_from(b).map_err(|_: IdError| OrderError::Malformed(what));
        if w.limit < 0 {
            return Err(OrderError::Malformed("order limit amount"));
        }
        Ok(Self {
            serial: SerialNumber::try_from(w.serial_number.as_ref())?,
            satellite_id: id(&w.satellite_id, "satellite id")?,
            node_id: id(&w.storage_node_id, "node id")?,
            piece_id: PieceId::try_from(w.piece_id.as_ref())?,
            action: PieceAction::try_from(w.action)?,
            limit: w.limit as u64,
            piece_public_key: PublicKey::try_from(w.piece_public_key.as_ref())
                .map_err(|_| OrderError::Malformed("piece public key"))?,
            created_ms: w.order_creation_unix_ms,
            expires_ms: w.order_expiration_unix_ms,
            piece_expires_ms: w.piece_expiration_unix_ms,
            metadata: w.encrypted_metadata.to_vec(),
        })
    }
}

/// The uplink's signed statement that it owes for `amount` bytes under a serial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub serial: SerialNumber,
    pub amount: u64,
}

impl Order {
    pub fn sign(&self, piece_key: &KeyPair) -> pb::SignedOrder {
        let bytes = pb::Order {
            serial_number: self.serial.0.to_vec().into(),
            amount: self.amount as i64,
        }
        .encode_to_vec();
        let signature = piece_key.sign(Domain::Order, &bytes);
        pb::SignedOrder {
            order: bytes.into(),
            signature: signature.into(),
        }
    }

    /// Verifies an order against its limit: piece-key signature, serial and
    /// amount within the limit.
    pub fn verify(signed: &pb::SignedOrder, limit: &OrderLimit) -> Result<Self, OrderError> {
        limit
            .piece_public_key
            .verify(Domain::Order, &signed.order, &signed.signature)
            .map_err(|_| OrderError::BadUplinkSignature)?;
        let wire =
            pb::Order::decode(signed.order.as_ref()).map_err(|_| OrderError::Malformed("order"))?;
        let serial = SerialNumber::try_from(wire.serial_number.as_ref())?;
        if serial != limit.serial {
            return Err(OrderError::WrongSerial);
        }
        if wire.amount < 0 {
            return Err(OrderError::Malformed("order amount"));
        }
        let amount = wire.amount as u64;
        if amount > limit.limit {
            return Err(OrderError::AmountAboveLimit {
                amount,
                limit: limit.limit,
            });
        }
        Ok(Self { serial, amount })
    }
}

impl Order {
    /// Verifies the next order of a transfer: as [`Order::verify`], and its
    /// amount must not be below the `previous` one.
    pub fn verify_after(
        signed: &pb::SignedOrder,
        limit: &OrderLimit,
        previous: u64,
    ) -> Result<Self, OrderError> {
        let order = Self::verify(signed, limit)?;
        if order.amount < previous {
            return Err(OrderError::AmountDecreased {
                previous,
                amount: order.amount,
            });
        }
        Ok(order)
    }
}

/// A statement of a piece's content: signed by the uplink when it finishes
/// an upload, and by the node when it has stored the piece.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PieceHash {
    pub piece_id: PieceId,
    pub hash: [u8; 32],
    pub size: u64,
    pub timestamp_ms: i64,
}

impl PieceHash {
    pub fn sign(&self, key: &KeyPair) -> pb::SignedPieceHash {
        let bytes = pb::PieceHash {
            piece_id: self.piece_id.0.to_vec().into(),
            hash: self.hash.to_vec().into(),
            piece_size: self.size as i64,
            timestamp_unix_ms: self.timestamp_ms,
        }
        .encode_to_vec();
        let signature = key.sign(Domain::PieceHash, &bytes);
        pb::SignedPieceHash {
            hash: bytes.into(),
            signature: signature.into(),
        }
    }

    pub fn verify(signed: &pb::SignedPieceHash, key: &PublicKey) -> Result<Self, OrderError> {
        key.verify(Domain::PieceHash, &signed.hash, &signed.signature)
            .map_err(|_| OrderError::BadUplinkSignature)?;
        let w = pb::PieceHash::decode(signed.hash.as_ref())
            .map_err(|_| OrderError::Malformed("piece hash"))?;
        Ok(Self {
            piece_id: PieceId::try_from(w.piece_id.as_ref())?,
            hash: w
                .hash
                .as_ref()
                .try_into()
                .map_err(|_| OrderError::Malformed("hash"))?,
            size: u64::try_from(w.piece_size).map_err(|_| OrderError::Malformed("piece size"))?,
            timestamp_ms: w.timestamp_unix_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(sat: &Identity, node: NodeId, piece_key: &KeyPair) -> OrderLimit {
        OrderLimit {
            serial: SerialNumber::random(),
            satellite_id: sat.id(),
            node_id: node,
            piece_id: PieceId::random(),
            action: PieceAction::Put,
            limit: 1000,
            piece_public_key: piece_key.public(),
            created_ms: now_ms(),
            expires_ms: now_ms() + 60_000,
            piece_expires_ms: 0,
            metadata: Vec::new(),
        }
    }

    #[test]
    fn limit_signature_binds_the_bytes() {
        let sat = Identity::generate(0, |_| {});
        let other = Identity::generate(0, |_| {});
        let node = Identity::generate(0, |_| {}).id();
        let piece_key = KeyPair::generate();
        let l = limit(&sat, node, &piece_key);
        let signed = l.sign(&sat);
        assert_eq!(
            OrderLimit::verify(&signed, &sat.public()).expect("valid"),
            l
        );
        assert_eq!(
            OrderLimit::verify(&signed, &other.public()),
            Err(OrderError::BadSatelliteSignature)
        );
        let mut tampered = signed.clone();
        let mut bytes = tampered.limit.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        tampered.limit = bytes.into();
        assert_eq!(
            OrderLimit::verify(&tampered, &sat.public()),
            Err(OrderError::BadSatelliteSignature)
        );
        assert!(l.check(&node, PieceAction::Put, now_ms()).is_ok());
        assert_eq!(
            l.check(&other.id(), PieceAction::Put, now_ms()),
            Err(OrderError::WrongNode(node))
        );
        assert_eq!(
            l.check(&node, PieceAction::Put, now_ms() + 120_000),
            Err(OrderError::Expired)
        );
        assert!(matches!(
            l.check(&node, PieceAction::Get, now_ms()),
            Err(OrderError::WrongAction { .. })
        ));
    }

    #[test]
    fn orders_are_checked_against_their_limit() {
        let sat = Identity::generate(0, |_| {});
        let node = Identity::generate(0, |_| {}).id();
        let piece_key = KeyPair::generate();
        let l = limit(&sat, node, &piece_key);
        let ok = Order {
            serial: l.serial,
            amount: 500,
        };
        assert_eq!(Order::verify(&ok.sign(&piece_key), &l).expect("valid"), ok);
        let over = Order {
            serial: l.serial,
            amount: 1001,
        };
        assert_eq!(
            Order::verify(&over.sign(&piece_key), &l),
            Err(OrderError::AmountAboveLimit {
                amount: 1001,
                limit: 1000
            })
        );
        assert_eq!(
            Order::verify(&ok.sign(&KeyPair::generate()), &l),
            Err(OrderError::BadUplinkSignature)
        );
        let wrong = Order {
            serial: SerialNumber::random(),
            amount: 1,
        };
        assert_eq!(
            Order::verify(&wrong.sign(&piece_key), &l),
            Err(OrderError::WrongSerial)
        );
    }
}
