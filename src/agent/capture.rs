//! Per-call capture of a worker's stdout or stderr, with a cap.
//!
//! The worker's fds 1 and 2 are pipes the agent reads all the time (so a chatty subprocess can
//! never block on a full pipe). The worker flushes user output before it writes its reply, so
//! once the reply is in, everything still in the pipes belongs to the call: the session reads
//! the pipes dry (non-blocking) and takes the capture. Output that arrives between calls (a
//! background subprocess) goes to the next call. Bytes past the cap are counted as dropped.

/// The output of one call.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Captured {
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

impl Captured {
    /// Output as text; bytes that are not UTF-8 become U+FFFD.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

#[derive(Debug)]
pub struct Capture {
    cap: usize,
    current: Captured,
}

impl Capture {
    pub fn new(cap: usize) -> Self {
        Capture {
            cap,
            current: Captured::default(),
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        let room = self.cap.saturating_sub(self.current.bytes.len());
        if data.len() > room {
            self.current.truncated = true;
        }
        self.current
            .bytes
            .extend_from_slice(&data[..data.len().min(room)]);
    }

    /// Everything captured since the last take.
    pub fn take(&mut self) -> Captured {
        std::mem::take(&mut self.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_output_per_take() {
        let mut c = Capture::new(4);
        c.feed(b"01");
        c.feed(b"23456789");
        let got = c.take();
        assert_eq!((got.bytes.as_slice(), got.truncated), (&b"0123"[..], true));
        c.feed(b"ok");
        assert_eq!(
            c.take(),
            Captured {
                bytes: b"ok".to_vec(),
                truncated: false
            }
        );
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let c = Captured {
            bytes: vec![b'a', 0xff, b'b'],
            truncated: false,
        };
        assert_eq!(c.text(), "a\u{fffd}b");
    }
}
