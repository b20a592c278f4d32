//! Framing of one RPC on one bidirectional QUIC stream.
//!
//! A frame is a 5-byte header — kind (1 byte) and payload length (u32, big
//! endian) — followed by the payload. `MESSAGE` frames carry one protobuf
//! message and are buffered whole, so their length is checked against a cap
//! *before* any byte of the payload is read. `DATA` frames carry raw piece
//! bytes and are handed on in the chunks QUIC delivers them in, without
//! copying.

use bytes::{BufMut, Bytes, BytesMut};
use quinn::{RecvStream, SendStream};

/// Largest protobuf message accepted by default.
pub const MAX_MESSAGE_LEN: usize = 1 << 20;
/// Largest single data frame.
pub const MAX_DATA_FRAME_LEN: usize = 4 << 20;

const KIND_MESSAGE: u8 = 1;
const KIND_DATA: u8 = 2;
const HEADER_LEN: usize = 5;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the {max}-byte cap")]
    FrameTooLarge { len: usize, max: usize },
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("stream ended in the middle of a frame")]
    Truncated,
    #[error("stream ended before the expected message")]
    UnexpectedEnd,
    #[error("expected a message frame, got data")]
    UnexpectedData,
    #[error("expected data, got a message frame")]
    UnexpectedMessage,
    #[error("malformed message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("reading from the stream: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("writing to the stream: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream already closed")]
    Closed(#[from] quinn::ClosedStream),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
}

/// One unit read from a stream: a whole message, or a chunk of a data frame.
#[derive(Debug)]
pub enum Frame {
    Message(Bytes),
    Data(Bytes),
}

/// What a frame header announces, its length checked against the caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameHeader {
    Message(usize),
    Data(usize),
}

/// Parses a frame header, refusing lengths over the caps before anything
/// is buffered.
pub fn parse_header(
    header: &[u8; HEADER_LEN],
    max_message: usize,
) -> Result<FrameHeader, WireError> {
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    match header[0] {
        KIND_MESSAGE if len > max_message => Err(WireError::FrameTooLarge {
            len,
            max: max_message,
        }),
        KIND_MESSAGE => Ok(FrameHeader::Message(len)),
        KIND_DATA if len > MAX_DATA_FRAME_LEN => Err(WireError::FrameTooLarge {
            len,
            max: MAX_DATA_FRAME_LEN,
        }),
        KIND_DATA => Ok(FrameHeader::Data(len)),
        other => Err(WireError::UnknownKind(other)),
    }
}

/// Splits a whole stream's bytes into frames, as [`FrameReader`] reads
/// them (without the socket): for tests and fuzzing.
pub fn split_frames(mut bytes: &[u8], max_message: usize) -> Result<Vec<Frame>, WireError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let header: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(WireError::Truncated)?;
        let (len, message) = match parse_header(header, max_message)? {
            FrameHeader::Message(len) => (len, true),
            FrameHeader::Data(len) => (len, false),
        };
        let body = bytes
            .get(HEADER_LEN..HEADER_LEN + len)
            .ok_or(WireError::Truncated)?;
        let body = Bytes::copy_from_slice(body);
        out.push(if message {
            Frame::Message(body)
        } else {
            Frame::Data(body)
        });
        bytes = &bytes[HEADER_LEN + len..];
    }
    Ok(out)
}

/// Bytes of a frame header.
pub const FRAME_HEADER_LEN: usize = HEADER_LEN;

/// Reads frames from the receiving half of an RPC stream.
pub struct FrameReader {
    recv: RecvStream,
    max_message: usize,
    data_left: usize,
}

impl FrameReader {
    pub fn new(recv: RecvStream) -> Self {
        Self::with_max_message(recv, MAX_MESSAGE_LEN)
    }

    pub fn with_max_message(recv: RecvStream, max_message: usize) -> Self {
        Self {
            recv,
            max_message,
            data_left: 0,
        }
    }

    /// The next frame, or `None` when the peer finished the stream cleanly
    /// at a frame boundary.
    pub async fn next(&mut self) -> Result<Option<Frame>, WireError> {
        loop {
            if self.data_left > 0 {
                return match self.recv.read_chunk(self.data_left, true).await? {
                    Some(chunk) => {
                        self.data_left -= chunk.bytes.len();
                        Ok(Some(Frame::Data(chunk.bytes)))
                    }
                    None => Err(WireError::Truncated),
                };
            }
            let mut header = [0u8; HEADER_LEN];
            match self.recv.read(&mut header[..1]).await? {
                None => return Ok(None),
                Some(0) => continue,
                Some(_) => {}
            }
            read_exact(&mut self.recv, &mut header[1..]).await?;
            match parse_header(&header, self.max_message)? {
                FrameHeader::Message(len) => {
                    let mut buf = vec![0u8; len];
                    read_exact(&mut self.recv, &mut buf).await?;
                    return Ok(Some(Frame::Message(Bytes::from(buf))));
                }
                FrameHeader::Data(len) => self.data_left = len,
            }
        }
    }

    /// The next frame, which must be a message of type `M`.
    pub async fn message<M: prost::Message + Default>(&mut self) -> Result<M, WireError> {
        match self.next().await? {
            Some(Frame::Message(bytes)) => Ok(M::decode(bytes)?),
            Some(Frame::Data(_)) => Err(WireError::UnexpectedData),
            None => Err(WireError::UnexpectedEnd),
        }
    }

    /// Tells the peer to stop sending (used when rejecting a transfer).
    pub fn stop(&mut self, code: u32) {
        let _ = self.recv.stop(quinn::VarInt::from_u32(code));
    }
}

async fn read_exact(recv: &mut RecvStream, buf: &mut [u8]) -> Result<(), WireError> {
    recv.read_exact(buf).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => WireError::Truncated,
        quinn::ReadExactError::ReadError(e) => WireError::Read(e),
    })
}

/// Writes frames to the sending half of an RPC stream. Dropped before
/// [`FrameWriter::finish`], it resets the stream, so an abandoned transfer
/// (a cancelled long-tail upload) reads as cancelled on the other side
/// rather than as a stream that ended early.
pub struct FrameWriter {
    send: SendStream,
    finished: bool,
}

impl Drop for FrameWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.send.reset(quinn::VarInt::from_u32(0));
        }
    }
}

impl FrameWriter {
    pub fn new(send: SendStream) -> Self {
        Self {
            send,
            finished: false,
        }
    }

    pub async fn message<M: prost::Message>(&mut self, msg: &M) -> Result<(), WireError> {
        let len = msg.encoded_len();
        let mut buf = BytesMut::with_capacity(HEADER_LEN + len);
        buf.put_u8(KIND_MESSAGE);
        buf.put_u32(len as u32);
        msg.encode(&mut buf)
            .expect("buffer was sized by encoded_len");
        self.send.write_chunk(buf.freeze()).await?;
        Ok(())
    }

    /// Sends `data` as one or more data frames without copying it.
    pub async fn data(&mut self, mut data: Bytes) -> Result<(), WireError> {
        while !data.is_empty() {
            let part = data.split_to(data.len().min(MAX_DATA_FRAME_LEN));
            let mut header = [0u8; HEADER_LEN];
            header[0] = KIND_DATA;
            header[1..].copy_from_slice(&(part.len() as u32).to_be_bytes());
            self.send
                .write_all_chunks(&mut [Bytes::copy_from_slice(&header), part])
                .await?;
        }
        Ok(())
    }

    /// Raw bytes, for tests that send garbage.
    pub async fn raw(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    pub fn finish(&mut self) -> Result<(), WireError> {
        self.finished = true;
        self.send.finish()?;
        Ok(())
    }

    /// Abandons the stream (the peer sees a reset).
    pub fn reset(&mut self, code: u32) {
        self.finished = true;
        let _ = self.send.reset(quinn::VarInt::from_u32(code));
    }
}
