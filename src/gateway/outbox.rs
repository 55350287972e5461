//! The frames a socket's kernel buffer has not taken yet.
//!
//! Writes never wait: frames are handed to the socket at once ([`Sink::write_now`]), and
//! only what the kernel did not take is queued, to be written when the socket is writable
//! again. So an idle socket holds no buffer, and a frame shared by many sockets is never
//! copied. Because the kernel may take part of a frame, the queue keeps how much of its
//! front frame was already written: the next write resumes there, never re-sending a byte.
//!
//! The queue is bounded by the caller's byte limit with one rule ([`Outbox::overflow`]):
//! beyond it, every frame not yet started is discarded and the socket is to be closed as a
//! slow consumer. A frame already started is kept, so the close frame that follows is not
//! read as the rest of its payload.

use bytes::Bytes;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use tokio::net::TcpStream;

/// Frames handed to one vectored write.
const MAX_IOV: usize = 128;

/// Where an [`Outbox`] writes: takes what it can now, without waiting.
pub trait Sink {
    /// Writes as much of `frames`, in order, as can be written now; returns the bytes
    /// taken. Being full (`WouldBlock`) is not an error: it takes fewer bytes.
    fn write_now<'a>(&mut self, frames: impl Iterator<Item = &'a [u8]>) -> io::Result<usize>;
}

/// A plain socket: vectored writes of up to [`MAX_IOV`] frames each, until the kernel
/// takes less than offered.
impl Sink for &TcpStream {
    fn write_now<'a>(&mut self, frames: impl Iterator<Item = &'a [u8]>) -> io::Result<usize> {
        let mut frames = frames.filter(|f| !f.is_empty()).peekable();
        let mut total = 0;
        while frames.peek().is_some() {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut count = 0;
            let mut wanted = 0;
            for (slot, frame) in slices.iter_mut().zip(frames.by_ref()) {
                *slot = IoSlice::new(frame);
                wanted += frame.len();
                count += 1;
            }
            match self.try_write_vectored(&slices[..count]) {
                Ok(n) => {
                    total += n;
                    if n < wanted {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }
}

/// Frames the kernel has not taken yet, in order.
#[derive(Debug, Default)]
pub struct Outbox {
    frames: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    offset: usize,
    /// Unwritten bytes in `frames`.
    bytes: usize,
}

/// What [`Outbox::overflow`] did to a queue over its limit.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow {
    /// Unwritten bytes queued when the limit was found exceeded.
    pub queued: usize,
    /// Frames discarded.
    pub discarded: usize,
}

impl Outbox {
    /// Whether every frame has been written.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Sends `frames` after those queued: when nothing is queued they are written to
    /// `sink` now, as far as it takes them; the rest is queued. On a write error nothing
    /// is queued.
    pub fn offer(&mut self, frames: &[Bytes], mut sink: impl Sink) -> io::Result<()> {
        let written = if self.is_empty() { sink.write_now(frames.iter().map(|f| &f[..]))? } else { 0 };
        let mut skip = written;
        for frame in frames {
            if skip >= frame.len() {
                skip -= frame.len();
                continue;
            }
            if self.is_empty() {
                self.offset = skip;
            }
            self.bytes += frame.len() - skip;
            skip = 0;
            self.frames.push_back(frame.clone());
        }
        Ok(())
    }

    /// Queues `frame` behind the others without writing it (the task writes it).
    pub fn queue(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Writes what is queued to `sink`, as far as it takes it; `Ok(true)` when nothing is
    /// left. On a write error the queue is unchanged.
    pub fn flush(&mut self, mut sink: impl Sink) -> io::Result<bool> {
        if self.is_empty() {
            return Ok(true);
        }
        let written = {
            let mut slices = self.frames.iter().map(|f| &f[..]);
            let head = slices.next().map(|f| &f[self.offset..]);
            sink.write_now(head.into_iter().chain(slices))?
        };
        self.bytes -= written;
        let mut left = written + self.offset;
        while let Some(front) = self.frames.front() {
            if left < front.len() {
                break;
            }
            left -= front.len();
            self.frames.pop_front();
        }
        self.offset = left;
        if self.is_empty() {
            // Give the queue's memory back: an idle socket holds no buffer.
            self.frames = VecDeque::new();
        }
        Ok(self.is_empty())
    }

    /// The slow-consumer rule: over `limit` unwritten bytes, discards every frame not yet
    /// started (the one partly written stays, so the stream remains well framed). `None`
    /// within the limit.
    pub fn overflow(&mut self, limit: usize) -> Option<Overflow> {
        if self.bytes <= limit {
            return None;
        }
        let queued = self.bytes;
        let partial = if self.offset > 0 { self.frames.pop_front() } else { None };
        let discarded = self.frames.len();
        self.frames.clear();
        self.bytes = partial.as_ref().map_or(0, |f| f.len() - self.offset);
        self.frames.extend(partial);
        Some(Overflow { queued, discarded })
    }

    /// Discards everything queued (the socket failed).
    pub fn clear(&mut self) {
        *self = Outbox::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes the next of `takes` bytes per write (0 once they run out), and
    /// keeps what it was given.
    #[derive(Default)]
    struct Fake {
        takes: VecDeque<usize>,
        wire: Vec<u8>,
    }

    impl Sink for &mut Fake {
        fn write_now<'a>(&mut self, frames: impl Iterator<Item = &'a [u8]>) -> io::Result<usize> {
            let mut budget = self.takes.pop_front().unwrap_or(0);
            let start = self.wire.len();
            for frame in frames {
                let n = budget.min(frame.len());
                self.wire.extend_from_slice(&frame[..n]);
                budget -= n;
            }
            Ok(self.wire.len() - start)
        }
    }

    /// Frames of the given lengths, each filled with its own index (so the wire shows order).
    fn frames(lens: &[usize]) -> Vec<Bytes> {
        lens.iter().enumerate().map(|(i, &len)| Bytes::from(vec![i as u8; len])).collect()
    }

    /// The queue as (front offset, unwritten bytes, frame lengths).
    fn state(outbox: &Outbox) -> (usize, usize, Vec<usize>) {
        (outbox.offset, outbox.bytes, outbox.frames.iter().map(Bytes::len).collect())
    }

    struct Case {
        name: &'static str,
        /// Lengths of the frames offered in one call.
        offered: &'static [usize],
        /// Bytes the sink takes: on the offer, then on each flush.
        takes: &'static [usize],
        flushes: usize,
        limit: usize,
        /// Front offset, unwritten bytes, and lengths of the frames queued at the end.
        queued: (usize, usize, &'static [usize]),
        /// Frames the overflow rule discarded (`None`: the limit held).
        discarded: Option<usize>,
    }

    const CASES: &[Case] = &[
        Case {
            name: "all taken at once",
            offered: &[3, 4],
            takes: &[7],
            flushes: 0,
            limit: 0,
            queued: (0, 0, &[]),
            discarded: None,
        },
        Case {
            name: "full socket: all queued",
            offered: &[3, 4],
            takes: &[0],
            flushes: 0,
            limit: 100,
            queued: (0, 7, &[3, 4]),
            discarded: None,
        },
        Case {
            name: "first frame partly taken",
            offered: &[3, 4],
            takes: &[2],
            flushes: 0,
            limit: 100,
            queued: (2, 5, &[3, 4]),
            discarded: None,
        },
        Case {
            name: "first frame taken, second partly",
            offered: &[3, 4, 5],
            takes: &[4],
            flushes: 0,
            limit: 100,
            queued: (1, 8, &[4, 5]),
            discarded: None,
        },
        Case {
            name: "flush resumes mid-frame",
            offered: &[3, 4, 5],
            takes: &[2, 3],
            flushes: 1,
            limit: 100,
            queued: (2, 7, &[4, 5]),
            discarded: None,
        },
        Case {
            name: "flushes drain the queue",
            offered: &[3, 4, 5],
            takes: &[1, 6, 5],
            flushes: 2,
            limit: 100,
            queued: (0, 0, &[]),
            discarded: None,
        },
        Case {
            name: "exactly at the limit",
            offered: &[3, 4],
            takes: &[0],
            flushes: 0,
            limit: 7,
            queued: (0, 7, &[3, 4]),
            discarded: None,
        },
        Case {
            name: "over the limit, nothing started: all discarded",
            offered: &[3, 4],
            takes: &[0],
            flushes: 0,
            limit: 6,
            queued: (0, 0, &[]),
            discarded: Some(2),
        },
        Case {
            name: "over the limit: the partly written frame stays",
            offered: &[3, 4, 5],
            takes: &[1],
            flushes: 0,
            limit: 10,
            queued: (1, 2, &[3]),
            discarded: Some(2),
        },
        Case {
            name: "over the limit after a whole frame was taken",
            offered: &[3, 4, 5],
            takes: &[3],
            flushes: 0,
            limit: 8,
            queued: (0, 0, &[]),
            discarded: Some(2),
        },
    ];

    #[test]
    fn offers_flushes_and_overflows() {
        for case in CASES {
            let offered = frames(case.offered);
            let mut sink = Fake { takes: case.takes.iter().copied().collect(), wire: Vec::new() };
            let mut outbox = Outbox::default();
            outbox.offer(&offered, &mut sink).unwrap();
            for _ in 0..case.flushes {
                outbox.flush(&mut sink).unwrap();
            }
            let discarded = outbox.overflow(case.limit).map(|o| o.discarded);
            let (offset, bytes, lens) = case.queued;
            assert_eq!(state(&outbox), (offset, bytes, lens.to_vec()), "{}", case.name);
            assert_eq!(discarded, case.discarded, "{}", case.name);
            let all: Vec<u8> = offered.concat();
            assert_eq!(sink.wire, all[..sink.wire.len()], "{}: bytes out of order", case.name);
        }
    }

    #[test]
    fn offers_behind_a_queue_are_not_written_ahead() {
        let mut sink = Fake { takes: [1, 100].into(), wire: Vec::new() };
        let mut outbox = Outbox::default();
        outbox.offer(&frames(&[3]), &mut sink).unwrap();
        outbox.offer(&[Bytes::from_static(b"zz")], &mut sink).unwrap();
        assert_eq!(state(&outbox), (1, 4, vec![3, 2]));
        outbox.queue(Bytes::from_static(b"c"));
        assert!(outbox.flush(&mut sink).unwrap());
        assert_eq!(sink.wire, b"\0\0\0zzc");
    }

    #[test]
    fn overflow_reports_the_bytes_queued() {
        let mut sink = Fake::default();
        let mut outbox = Outbox::default();
        outbox.offer(&frames(&[5, 5]), &mut sink).unwrap();
        assert_eq!(outbox.overflow(9), Some(Overflow { queued: 10, discarded: 2 }));
        assert!(outbox.is_empty());
    }
}
