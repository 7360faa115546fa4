//! Frame codec: `MAGIC` (4 bytes) + payload length (u32, big-endian) + UTF-8 JSON payload.
//!
//! The magic starts with 0xFF, a byte that never occurs in UTF-8, so it cannot appear inside a
//! well-formed payload. That makes resynchronisation exact: whenever the decoder meets 0xFF
//! where payload bytes should be, the frame it was reading was cut short (a host died
//! mid-frame), and a new header starts there. Garbage between frames is skipped up to the next
//! 0xFF. Problems are reported as [`Frame`] items, never as stream errors, so one bad frame
//! never ends the stream.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

use super::ProtocolError;

/// Every frame starts with these bytes.
pub const MAGIC: [u8; 4] = [0xFF, b'B', b'H', b'1'];
/// Magic plus length.
pub const HEADER_LEN: usize = 8;
/// Default cap on a payload, in bytes.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// One decoded item: a payload, or a problem the reader should report and move past.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete payload (not yet checked to be JSON).
    Data(Bytes),
    /// Bytes that were not a frame header were discarded.
    Garbage { bytes: usize },
    /// A header announced more than the limit; its payload is being discarded.
    TooLarge { len: usize, max: usize },
    /// A new header began before the announced payload was complete.
    Truncated { expected: usize, got: usize },
}

#[derive(Debug, Clone, Copy)]
enum State {
    Header,
    Payload { len: usize, scanned: usize },
    Skip { remaining: usize },
}

/// Decoder and encoder of frames, with a payload cap.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max: usize,
    state: State,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameCodec {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            state: State::Header,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        loop {
            match self.state {
                State::Header => {
                    if src.is_empty() {
                        return Ok(None);
                    }
                    match find_header(src) {
                        HeaderScan::At(0) => {}
                        HeaderScan::At(p) => {
                            src.advance(p);
                            return Ok(Some(Frame::Garbage { bytes: p }));
                        }
                        HeaderScan::Partial(0) => return Ok(None),
                        HeaderScan::Partial(p) | HeaderScan::None(p) => {
                            src.advance(p);
                            return Ok(Some(Frame::Garbage { bytes: p }));
                        }
                    }
                    if src.len() < HEADER_LEN {
                        return Ok(None);
                    }
                    let len = u32::from_be_bytes([src[4], src[5], src[6], src[7]]) as usize;
                    src.advance(HEADER_LEN);
                    if len > self.max {
                        self.state = State::Skip { remaining: len };
                        return Ok(Some(Frame::TooLarge { len, max: self.max }));
                    }
                    self.state = State::Payload { len, scanned: 0 };
                }
                State::Payload { len, scanned } => {
                    let avail = src.len().min(len);
                    if let Some(i) = src[scanned..avail].iter().position(|&b| b == MAGIC[0]) {
                        let got = scanned + i;
                        src.advance(got);
                        self.state = State::Header;
                        return Ok(Some(Frame::Truncated { expected: len, got }));
                    }
                    if src.len() < len {
                        self.state = State::Payload {
                            len,
                            scanned: avail,
                        };
                        src.reserve(len - src.len());
                        return Ok(None);
                    }
                    self.state = State::Header;
                    return Ok(Some(Frame::Data(src.split_to(len).freeze())));
                }
                State::Skip { remaining } => {
                    let avail = src.len().min(remaining);
                    if let Some(i) = src[..avail].iter().position(|&b| b == MAGIC[0]) {
                        src.advance(i);
                        self.state = State::Header;
                        continue;
                    }
                    src.advance(avail);
                    if avail == remaining {
                        self.state = State::Header;
                        continue;
                    }
                    self.state = State::Skip {
                        remaining: remaining - avail,
                    };
                    return Ok(None);
                }
            }
        }
    }
}

enum HeaderScan {
    /// The full magic starts at this offset.
    At(usize),
    /// A prefix of the magic fills the buffer from this offset to its end.
    Partial(usize),
    /// No magic at all; this many bytes are garbage.
    None(usize),
}

fn find_header(src: &[u8]) -> HeaderScan {
    let mut from = 0;
    while let Some(i) = src[from..].iter().position(|&b| b == MAGIC[0]) {
        let p = from + i;
        let rest = &src[p..];
        if rest.len() >= MAGIC.len() {
            if rest[..MAGIC.len()] == MAGIC {
                return HeaderScan::At(p);
            }
        } else if MAGIC.starts_with(rest) {
            return HeaderScan::Partial(p);
        }
        from = p + 1;
    }
    HeaderScan::None(src.len())
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: &[u8], dst: &mut BytesMut) -> Result<(), std::io::Error> {
        encode_frame(item, self.max, dst)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    }
}

/// Appends one frame carrying `payload` to `dst`.
pub fn encode_frame(payload: &[u8], max: usize, dst: &mut BytesMut) -> Result<(), ProtocolError> {
    if payload.len() > max {
        return Err(ProtocolError::FrameTooLarge {
            len: payload.len(),
            max,
        });
    }
    dst.reserve(HEADER_LEN + payload.len());
    dst.put_slice(&MAGIC);
    dst.put_u32(payload.len() as u32);
    dst.put_slice(payload);
    Ok(())
}

/// Serializes `value` as JSON straight into one frame, without an intermediate buffer.
pub fn encode_json<T: Serialize + ?Sized>(value: &T, max: usize) -> Result<Bytes, ProtocolError> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_slice(&MAGIC);
    buf.put_u32(0);
    let mut w = buf.writer();
    serde_json::to_writer(&mut w, value)?;
    let mut buf = w.into_inner();
    let len = buf.len() - HEADER_LEN;
    if len > max {
        return Err(ProtocolError::FrameTooLarge { len, max });
    }
    buf[4..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode_frame(payload, DEFAULT_MAX_FRAME, &mut b).unwrap();
        b.to_vec()
    }

    fn decode_all(codec: &mut FrameCodec, input: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn round_trips_frames_split_at_every_byte() {
        let mut input = frame(br#"{"a":1}"#);
        input.extend(frame(b"[]"));
        for split in 0..input.len() {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            for chunk in [&input[..split], &input[split..]] {
                buf.extend_from_slice(chunk);
                while let Some(f) = codec.decode(&mut buf).unwrap() {
                    frames.push(f);
                }
            }
            assert_eq!(
                frames,
                vec![
                    Frame::Data(Bytes::from_static(br#"{"a":1}"#)),
                    Frame::Data(Bytes::from_static(b"[]"))
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn skips_garbage_before_a_header() {
        let mut input = b"hello garbage \xff\xfe".to_vec();
        input.extend(frame(b"{}"));
        let frames = decode_all(&mut FrameCodec::default(), &input);
        assert_eq!(
            frames,
            vec![
                Frame::Garbage { bytes: 16 },
                Frame::Data(Bytes::from_static(b"{}"))
            ]
        );
    }

    #[test]
    fn a_frame_cut_short_by_a_new_header_is_reported_and_the_next_one_decoded() {
        let full = frame(br#"{"id":1,"op":"ping"}"#);
        let mut input = full[..12].to_vec();
        input.extend(frame(br#"{"id":2}"#));
        let frames = decode_all(&mut FrameCodec::default(), &input);
        assert_eq!(
            frames,
            vec![
                Frame::Truncated {
                    expected: full.len() - HEADER_LEN,
                    got: 4
                },
                Frame::Data(Bytes::from_static(br#"{"id":2}"#))
            ]
        );
    }

    #[test]
    fn oversized_frames_are_reported_and_skipped() {
        let mut codec = FrameCodec::new(4);
        let mut input = frame(b"0123456789");
        input.extend(frame(b"ok"));
        let frames = decode_all(&mut codec, &input);
        assert_eq!(
            frames,
            vec![
                Frame::TooLarge { len: 10, max: 4 },
                Frame::Data(Bytes::from_static(b"ok"))
            ]
        );
    }

    #[test]
    fn encode_json_writes_the_length() {
        let b = encode_json(&serde_json::json!({"x": "é"}), 100).unwrap();
        let mut buf = BytesMut::from(&b[..]);
        let f = FrameCodec::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::Data(Bytes::from(r#"{"x":"é"}"#.as_bytes().to_vec()))
        );
        assert!(matches!(
            encode_json(&"x".repeat(200), 100),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }
}
