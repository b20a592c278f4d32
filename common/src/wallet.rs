//! Payout addresses: Ethereum-style 20-byte addresses written as `0x` and
//! 40 hex digits, with the EIP-55 mixed-case checksum (the case of each
//! letter comes from the Keccak-256 hash of the lower-case address), so a
//! mistyped address is caught before any payment goes to it.

use std::fmt;
use std::str::FromStr;

use sha3::{Digest, Keccak256};

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Wallet([u8; 20]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WalletError {
    #[error("payout address {0:?} must start with 0x")]
    Prefix(String),
    #[error("payout address {0:?} must have 40 hex digits after 0x, it has {1}")]
    Length(String, usize),
    #[error("payout address {0:?} has a character that is not a hex digit")]
    NotHex(String),
    #[error(
        "payout address {given} fails its EIP-55 checksum (a mistyped character?); \
         the checksummed form of the address as typed is {expected}"
    )]
    Checksum { given: String, expected: String },
}

impl Wallet {
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// The EIP-55 checksummed text form.
    pub fn to_checksummed(&self) -> String {
        checksummed(&hex::encode(self.0))
    }
}

/// Applies EIP-55 casing to 40 lower-case hex digits.
fn checksummed(lower: &str) -> String {
    let hash = Keccak256::digest(lower.as_bytes());
    let mut out = String::with_capacity(42);
    out.push_str("0x");
    for (i, c) in lower.chars().enumerate() {
        let nibble = (hash[i / 2] >> if i % 2 == 0 { 4 } else { 0 }) & 0x0f;
        if c.is_ascii_alphabetic() && nibble >= 8 {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c);
        }
    }
    out
}

impl FromStr for Wallet {
    type Err = WalletError;

    /// Accepts an all-lower-case or all-upper-case address (no checksum,
    /// as EIP-55 allows) or a mixed-case one whose checksum is right.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let digits = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .ok_or_else(|| WalletError::Prefix(t.to_string()))?;
        if digits.len() != 40 {
            return Err(WalletError::Length(t.to_string(), digits.len()));
        }
        let mut bytes = [0u8; 20];
        hex::decode_to_slice(digits.to_ascii_lowercase(), &mut bytes)
            .map_err(|_| WalletError::NotHex(t.to_string()))?;
        let wallet = Self(bytes);
        let has_lower = digits.chars().any(|c| c.is_ascii_lowercase());
        let has_upper = digits.chars().any(|c| c.is_ascii_uppercase());
        if has_lower && has_upper {
            let expected = wallet.to_checksummed();
            if expected[2..] != *digits {
                return Err(WalletError::Checksum {
                    given: t.to_string(),
                    expected,
                });
            }
        }
        Ok(wallet)
    }
}

impl fmt::Display for Wallet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_checksummed())
    }
}

impl fmt::Debug for Wallet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Wallet({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vectors of EIP-55.
    const VECTORS: [&str; 4] = [
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
    ];

    #[test]
    fn eip55_vectors_round_trip_and_a_typo_is_caught() {
        for v in VECTORS {
            let w: Wallet = v.parse().expect(v);
            assert_eq!(w.to_string(), v);
            // Single-case forms carry no checksum and are accepted.
            let upper = format!("0x{}", v[2..].to_ascii_uppercase());
            assert_eq!(upper.parse::<Wallet>(), Ok(w));
            assert_eq!(v.to_ascii_lowercase().parse::<Wallet>(), Ok(w));
        }
        // One letter's case flipped: the checksum fails, and the error
        // shows the right form.
        let typo = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD";
        match typo.parse::<Wallet>() {
            Err(WalletError::Checksum { expected, .. }) => assert_eq!(expected, VECTORS[0]),
            other => panic!("{other:?}"),
        }
        // One digit changed in a checksummed address.
        assert!(matches!(
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAee".parse::<Wallet>(),
            Err(WalletError::Checksum { .. })
        ));
        assert!(matches!(
            "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed".parse::<Wallet>(),
            Err(WalletError::Prefix(_))
        ));
        assert!(matches!(
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeA".parse::<Wallet>(),
            Err(WalletError::Length(_, 38))
        ));
        assert!(matches!(
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeZ".parse::<Wallet>(),
            Err(WalletError::NotHex(_))
        ));
    }
}
