//! The wire protocol between host, agent and worker: the one definition of every message.
//!
//! Owns the frame format ([`frame`]: magic prefix, 4-byte big-endian length, UTF-8 JSON), the
//! requests ([`request`]: one [`Op`] per operation, parsed with errors that name the field) and
//! the replies ([`reply`]: an envelope carrying a payload, an error or an event, and one typed
//! payload per operation). The Python worker (python/beephost_worker.py) mirrors these types;
//! the example frames under tests/protocol/ pin both sides to the same shapes.

pub mod frame;
pub mod reply;
pub mod request;

pub use frame::{encode_frame, encode_json, Frame, FrameCodec, DEFAULT_MAX_FRAME, MAGIC};
pub use reply::*;
pub use request::*;

/// Version of this protocol, exchanged in the handshake.
pub const PROTOCOL_VERSION: u32 = 1;

/// Errors of the protocol layer.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("could not encode a frame: {0}")]
    Encode(#[from] serde_json::Error),
}
