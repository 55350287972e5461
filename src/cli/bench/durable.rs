//! The bench's side of durable sockets: it follows each socket's position frame by frame
//! (hello, replay, position frames, live messages), as docs/PROTOCOL.md tells a client to, so
//! that a resume storm can tell when every socket is current again, how much was replayed,
//! and that nothing came twice. A worker keeps each client's last position when its socket
//! closes, for the `resume` of its next connection.

use serde::{Deserialize, Serialize};

/// A durable frame, as much of it as the bench reads (contents are the bench's own strings).
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(default, borrow)]
    t: Option<&'a str>,
    #[serde(default, borrow)]
    e: Option<&'a str>,
    #[serde(default)]
    o: Option<u64>,
    #[serde(default)]
    recovered: bool,
    #[serde(default, borrow)]
    d: Option<&'a str>,
}

/// Where a client was when its socket closed.
#[derive(Debug, Clone)]
pub struct Position {
    epoch: String,
    offset: u64,
}

impl Position {
    /// The `resume` value of the next connection: `EPOCH:OFFSET`.
    pub fn resume(&self) -> String {
        format!("{}:{}", self.epoch, self.offset)
    }
}

/// A worker's resume counters (summed by the coordinator).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ResumeCounts {
    /// Hellos of sockets opened with `resume=` (at the top).
    pub new: u64,
    /// Hellos with `recovered: true`.
    pub recovered: u64,
    /// Hellos with `recovered: false` for a `resume=E:O`.
    pub not_recovered: u64,
    /// Replayed message frames (offsets up to the hello's top).
    pub replayed: u64,
    /// Message frames at or below the socket's position: must stay 0.
    pub duplicates: u64,
    /// Frames that are not durable frames: must stay 0.
    pub malformed: u64,
    /// Sockets that are current: opened at the top, or got the position frame that ends
    /// their replay.
    pub current: u64,
    /// When the last socket became current (ns).
    pub last_current_ns: u64,
    /// Upgrades answered 503 (the node's log not open yet) and tried again.
    pub retries: u64,
}

impl ResumeCounts {
    /// Adds `other` (another worker's) to these.
    pub fn merge(&mut self, other: &ResumeCounts) {
        self.new += other.new;
        self.recovered += other.recovered;
        self.not_recovered += other.not_recovered;
        self.replayed += other.replayed;
        self.duplicates += other.duplicates;
        self.malformed += other.malformed;
        self.current += other.current;
        self.last_current_ns = self.last_current_ns.max(other.last_current_ns);
        self.retries += other.retries;
    }
}

/// One durable socket's position, frame by frame.
#[derive(Debug)]
pub struct Track {
    /// The offset it resumed after; `None` when opened at the top.
    after: Option<u64>,
    epoch: String,
    /// The hello's top: message frames up to it are the replay.
    top: u64,
    position: u64,
    current: bool,
}

impl Track {
    /// A socket opened with `resume=` (`from` is `None`) or `resume=` `from`'s position.
    pub fn new(from: Option<&Position>) -> Track {
        Track {
            after: from.map(|p| p.offset),
            epoch: String::new(),
            top: 0,
            position: from.map_or(0, |p| p.offset),
            current: false,
        }
    }

    /// Takes one text frame into `counts`; returns the content of a live message (for its
    /// latency), `None` for anything else.
    pub fn take<'a>(&mut self, text: &'a [u8], counts: &mut ResumeCounts, now: u64) -> Option<&'a str> {
        let Ok(frame) = serde_json::from_slice::<Frame<'a>>(text) else {
            counts.malformed += 1;
            return None;
        };
        match (frame.t, frame.o) {
            (Some("hello"), Some(top)) => {
                self.epoch = frame.e.unwrap_or_default().to_owned();
                self.top = top;
                match (self.after, frame.recovered) {
                    (Some(_), true) => counts.recovered += 1,
                    (Some(_), false) => counts.not_recovered += 1,
                    (None, _) => counts.new += 1,
                }
                if !frame.recovered {
                    self.position = top;
                    self.became_current(counts, now);
                }
                None
            }
            (Some("pos"), Some(o)) => {
                self.position = self.position.max(o);
                if o >= self.top {
                    self.became_current(counts, now);
                }
                None
            }
            (None, Some(o)) if o <= self.position => {
                counts.duplicates += 1;
                None
            }
            (None, Some(o)) => {
                self.position = o;
                if !self.current && o <= self.top {
                    counts.replayed += 1;
                    return None;
                }
                frame.d
            }
            (None, None) => frame.d,
            _ => {
                counts.malformed += 1;
                None
            }
        }
    }

    fn became_current(&mut self, counts: &mut ResumeCounts, now: u64) {
        if !self.current {
            self.current = true;
            counts.current += 1;
            counts.last_current_ns = counts.last_current_ns.max(now);
        }
    }

    /// The position to resume from, once the hello came.
    pub fn position(&self) -> Option<Position> {
        (!self.epoch.is_empty()).then(|| Position { epoch: self.epoch.clone(), offset: self.position })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_is_current_after_its_replay_and_counts_duplicates() {
        let mut counts = ResumeCounts::default();
        let from = Position { epoch: "e".into(), offset: 3 };
        let mut track = Track::new(Some(&from));
        let frames: [&[u8]; 6] = [
            br#"{"t":"hello","e":"e","o":5,"recovered":true}"#,
            br#"{"o":4,"d":"replayed"}"#,
            br#"{"o":5,"d":"replayed"}"#,
            br#"{"t":"pos","o":5}"#,
            br#"{"o":5,"d":"again"}"#,
            br#"{"o":7,"d":"live"}"#,
        ];
        let live: Vec<Option<&str>> = frames.iter().map(|f| track.take(f, &mut counts, 9)).collect();
        assert_eq!(live, [None, None, None, None, None, Some("live")]);
        assert_eq!((counts.recovered, counts.replayed, counts.current, counts.duplicates), (1, 2, 1, 1));
        assert_eq!((counts.last_current_ns, track.position().unwrap().resume()), (9, "e:7".to_owned()));
    }

    #[test]
    fn a_socket_not_recovered_is_current_at_its_hello() {
        let mut counts = ResumeCounts::default();
        let mut track = Track::new(Some(&Position { epoch: "old".into(), offset: 3 }));
        track.take(br#"{"t":"hello","e":"new","o":0,"recovered":false}"#, &mut counts, 1);
        assert_eq!((counts.not_recovered, counts.current), (1, 1));
        assert_eq!(track.position().unwrap().resume(), "new:0");
        assert_eq!(track.take(b"not json", &mut counts, 2), None);
        assert_eq!(counts.malformed, 1);
    }
}
