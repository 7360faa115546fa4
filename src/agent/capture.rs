//! Per-call capture of a worker's stdout or stderr, cut at the worker's end-of-call marker.
//!
//! The worker's fds 1 and 2 are pipes the agent reads all the time (so a chatty subprocess can
//! never block on a full pipe). After each call the worker writes a marker naming the call's
//! sequence number through both pipes; everything before it belongs to that call, everything
//! after it to the next. Bytes past the cap are counted as dropped, but still scanned for the
//! marker.

use memchr::memmem;

/// Marker that ends the output of call `seq` (mirrors `marker_head` in the worker).
pub fn marker(token: &str, seq: u64) -> Vec<u8> {
    format!("\0BH-{token}-{seq}\0").into_bytes()
}

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
    /// A tail that may be the beginning of the awaited marker.
    held: Vec<u8>,
    expect: Option<Vec<u8>>,
    done: Option<Captured>,
}

impl Capture {
    pub fn new(cap: usize) -> Self {
        Capture {
            cap,
            current: Captured::default(),
            held: Vec::new(),
            expect: None,
            done: None,
        }
    }

    /// Starts waiting for `marker`: output up to it will be [`Capture::take`]n as one call's.
    pub fn expect(&mut self, marker: Vec<u8>) {
        self.done = None;
        self.expect = Some(marker);
    }

    /// Whether the awaited marker has been seen.
    pub fn is_done(&self) -> bool {
        self.done.is_some()
    }

    /// Stops waiting (the stream ended or the worker is gone): what was read so far is the call's.
    pub fn finish(&mut self) {
        if self.done.is_none() {
            let held = std::mem::take(&mut self.held);
            self.push(&held);
            self.expect = None;
            self.done = Some(std::mem::take(&mut self.current));
        }
    }

    /// The finished call's output (or everything read so far when no marker was awaited).
    pub fn take(&mut self) -> Captured {
        self.finish();
        self.done.take().unwrap_or_default()
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        let joined;
        let mut data: &[u8] = if self.held.is_empty() {
            chunk
        } else {
            let mut v = std::mem::take(&mut self.held);
            v.extend_from_slice(chunk);
            joined = v;
            &joined
        };
        if let Some(m) = self.expect.take() {
            if let Some(i) = memmem::find(data, &m) {
                self.push(&data[..i]);
                self.done = Some(std::mem::take(&mut self.current));
                data = &data[i + m.len()..];
            } else {
                let keep = partial_suffix(data, &m);
                let (now, later) = data.split_at(data.len() - keep);
                self.push(now);
                self.held = later.to_vec();
                self.expect = Some(m);
                return;
            }
        }
        self.push(data);
    }

    fn push(&mut self, data: &[u8]) {
        let room = self.cap.saturating_sub(self.current.bytes.len());
        if data.len() > room {
            self.current.truncated = true;
        }
        self.current
            .bytes
            .extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// Length of the longest suffix of `data` that is a proper prefix of `marker`.
fn partial_suffix(data: &[u8], marker: &[u8]) -> usize {
    let max = (marker.len() - 1).min(data.len());
    (1..=max)
        .rev()
        .find(|&k| data[data.len() - k..] == marker[..k])
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_the_marker_even_when_split_across_reads() {
        let m = marker("tok", 7);
        let mut stream = b"hello ".to_vec();
        stream.extend(&m);
        stream.extend(b"next call");
        for split in 0..stream.len() {
            let mut c = Capture::new(1024);
            c.expect(m.clone());
            c.feed(&stream[..split]);
            c.feed(&stream[split..]);
            assert!(c.is_done(), "split {split}");
            assert_eq!(c.take().bytes, b"hello ", "split {split}");
            c.expect(marker("tok", 8));
            c.finish();
            assert_eq!(c.take().bytes, b"next call", "split {split}");
        }
    }

    #[test]
    fn caps_output_but_still_finds_the_marker() {
        let m = marker("t", 1);
        let mut c = Capture::new(4);
        c.expect(m.clone());
        c.feed(b"0123456789");
        c.feed(&m);
        let got = c.take();
        assert_eq!((got.bytes.as_slice(), got.truncated), (&b"0123"[..], true));
    }

    #[test]
    fn output_between_calls_goes_to_the_next_call() {
        let mut c = Capture::new(100);
        c.feed(b"background ");
        c.expect(marker("t", 2));
        c.feed(b"call");
        c.feed(&marker("t", 2));
        assert_eq!(c.take().bytes, b"background call");
    }

    #[test]
    fn a_marker_for_another_call_is_plain_output() {
        let mut c = Capture::new(100);
        c.expect(marker("t", 3));
        c.feed(&marker("t", 2));
        assert!(!c.is_done());
        assert_eq!(c.take().bytes, marker("t", 2));
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
