//! Checks `storagenode setup` runs before it writes anything, so a bad
//! setup fails at once with one clear line instead of later with a
//! confusing one: the directory is writable, the allocation fits on the
//! disk, the address is well formed, and each satellite answers at its
//! address with the id the operator gave.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use loam_common::size::format_bytes;
use loam_common::transport::{self, Endpoint, TransportConfig};
use loam_common::{Identity, NodeId, NodeUrl, pb, rpc};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PreflightError {
    #[error("{dir} is not writable: {source}")]
    NotWritable {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the free space of {dir}: {source}")]
    FreeSpace {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "allocation {} is larger than the {} free on the disk holding {dir}; \
         lower --storage or free some space",
        format_bytes(*allocated),
        format_bytes(*free)
    )]
    AllocationTooLarge {
        allocated: u64,
        free: u64,
        dir: PathBuf,
    },
    #[error("address {address:?} is not HOST:PORT: {why}")]
    Address { address: String, why: &'static str },
    #[error("cannot resolve satellite address {address}: {source}")]
    Resolve {
        address: String,
        source: std::io::Error,
    },
    #[error("satellite {address} is unreachable: {why}")]
    Unreachable { address: String, why: String },
    #[error(
        "the satellite at {address} has id {actual}, not {expected}; \
         check the id in --satellite ID@HOST:PORT"
    )]
    WrongId {
        address: String,
        expected: NodeId,
        actual: NodeId,
    },
}

/// Free bytes of the file system holding `dir` (for unprivileged users).
pub fn free_space(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// Creates `dir` if needed and proves a file can be written and removed.
pub fn check_writable(dir: &Path) -> Result<(), PreflightError> {
    let err = |source| PreflightError::NotWritable {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(".loam-write-check");
    std::fs::write(&probe, b"ok").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)
}

/// The allocation must fit in the disk's free space (plus what the node
/// already stores there, `used`).
pub fn check_allocation(dir: &Path, allocated: u64, used: u64) -> Result<(), PreflightError> {
    let free = free_space(dir).map_err(|source| PreflightError::FreeSpace {
        dir: dir.to_path_buf(),
        source,
    })?;
    if allocated > free.saturating_add(used) {
        return Err(PreflightError::AllocationTooLarge {
            allocated,
            free,
            dir: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// `HOST:PORT` with a non-empty host of sane characters and a port in
/// 1..=65535 (`[v6]:PORT` for IPv6 literals).
pub fn check_address(address: &str) -> Result<(), PreflightError> {
    let bad = |why| PreflightError::Address {
        address: address.to_string(),
        why,
    };
    if address.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0) {
        return Ok(());
    }
    let (host, port) = address.rsplit_once(':').ok_or(bad("no port"))?;
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(bad("the port must be a number from 1 to 65535")),
        Ok(_) => {}
    }
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(bad("the host is not a valid name or IP address"));
    }
    Ok(())
}

/// Connects to a satellite, checks that it is the one named, and asks
/// what a node needs to know to set up (its least node-id difficulty).
pub async fn probe_satellite(
    url: &NodeUrl,
    timeout: Duration,
) -> Result<pb::InfoResponse, PreflightError> {
    let address = url.address.clone();
    let unreachable = |why: String| PreflightError::Unreachable {
        address: address.clone(),
        why,
    };
    let addr = url
        .socket_addr()
        .map_err(|source| PreflightError::Resolve {
            address: address.clone(),
            source,
        })?;
    let local: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let endpoint = Endpoint::bind(
        Identity::generate(0, |_| {}),
        local,
        TransportConfig::default(),
    )
    .map_err(|e| unreachable(e.to_string()))?;
    let result = tokio::time::timeout(timeout, async {
        let conn = endpoint
            .probe(addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (actual, _) = transport::peer_id(&conn).map_err(|e| unreachable(e.to_string()))?;
        if actual != url.id {
            return Err(PreflightError::WrongId {
                address: address.clone(),
                expected: url.id,
                actual,
            });
        }
        match rpc::satellite(
            &conn,
            &[],
            pb::satellite_request::Request::Info(pb::InfoRequest {}),
        )
        .await
        {
            Ok(pb::satellite_response::Response::Info(info)) => Ok(info),
            Ok(_) => Err(unreachable("it gave an unexpected answer".into())),
            Err(e) => Err(unreachable(e.to_string())),
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(unreachable(format!(
            "no answer within {} s (is it running, and is UDP open?)",
            timeout.as_secs()
        )))
    });
    endpoint.close();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        for ok in [
            "node.example.com:28967",
            "127.0.0.1:1",
            "[::1]:28967",
            "my-node:80",
        ] {
            assert!(check_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "node.example.com",
            ":28967",
            "host:0",
            "host:99999",
            "http://host:80",
            "bad_host!:80",
            "-x.com:80",
        ] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allocation_must_fit() {
        let dir = tempfile::tempdir().expect("tmp");
        check_writable(dir.path()).expect("writable");
        let free = free_space(dir.path()).expect("free");
        assert!(check_allocation(dir.path(), free / 2, 0).is_ok());
        let err = check_allocation(dir.path(), free + (1 << 40), 0).expect_err("too large");
        assert!(err.to_string().contains("is larger than"), "{err}");
    }
}
