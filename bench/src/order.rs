//! The in-order check: every subscriber must see every message of its channel once, in
//! order, with contiguous sequence numbers.
//!
//! A [`StreamChecker`] follows one subscriber's stream of one channel. It classifies what it
//! sees as it comes (a gap, a late message that fills a gap, a repeat) and, at the end, with
//! the last sequence number the publisher side knows was sent, counts what never arrived.
//! An order-sensitive checksum of the message ids ([`Checksum`]) catches a message that
//! arrived at the right sequence number but was the wrong message.

use std::collections::BTreeSet;

use serde::Serialize;

/// Gaps wider than this are counted, not remembered one by one.
const MAX_REMEMBERED_GAP: u64 = 1_000_000;

#[derive(Debug, Default)]
pub struct StreamChecker {
    /// Next sequence number expected; `None` until the stream starts.
    next: Option<u64>,
    /// Sequence numbers skipped by a gap and not seen since.
    missing: BTreeSet<u64>,
    /// Skipped numbers beyond [`MAX_REMEMBERED_GAP`] in one gap (counted as lost).
    unremembered: u64,
    received: u64,
    duplicates: u64,
    reordered: u64,
    gaps: u64,
    first_problem: Option<String>,
}

/// What one checker, or the sum of many, found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// Streams checked.
    pub streams: u64,
    pub received: u64,
    /// Sent but never received.
    pub lost: u64,
    /// Received more than once.
    pub duplicates: u64,
    /// Received after a later message of the same stream.
    pub reordered: u64,
    /// Times a stream skipped ahead (each either later filled, so reordered, or lost).
    pub gaps: u64,
    /// Streams whose message ids did not match what was sent at those sequence numbers.
    pub wrong_messages: u64,
    /// Messages that arrived on a stream they do not belong to.
    pub misrouted: u64,
    /// The first few problems, for the report.
    pub problems: Vec<String>,
}

impl CheckResult {
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.reordered == 0
            && self.gaps == 0
            && self.wrong_messages == 0
            && self.misrouted == 0
            && self.problems.is_empty()
    }

    pub fn add(&mut self, other: CheckResult) {
        self.streams += other.streams;
        self.received += other.received;
        self.lost += other.lost;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.gaps += other.gaps;
        self.wrong_messages += other.wrong_messages;
        self.misrouted += other.misrouted;
        for p in other.problems {
            self.problem(p);
        }
    }

    /// Notes a problem (the first ten are kept verbatim).
    pub fn problem(&mut self, p: String) {
        if self.problems.len() < 10 {
            self.problems.push(p);
        }
    }
}

impl StreamChecker {
    /// A checker that expects the stream to start at `first`.
    pub fn starting_at(first: u64) -> StreamChecker {
        StreamChecker {
            next: Some(first),
            ..StreamChecker::default()
        }
    }

    /// A checker that takes the first number it sees as the start.
    pub fn unstarted() -> StreamChecker {
        StreamChecker::default()
    }

    pub fn started(&self) -> bool {
        self.next.is_some()
    }

    /// The last in-order sequence number (the highest seen, when nothing is missing).
    #[cfg(test)]
    pub fn last(&self) -> Option<u64> {
        self.next.map(|n| n.saturating_sub(1))
    }

    /// Takes one received sequence number; returns whether it came in order.
    pub fn observe(&mut self, seq: u64) -> bool {
        self.received += 1;
        let Some(next) = self.next else {
            self.next = Some(seq + 1);
            return true;
        };
        if seq == next {
            self.next = Some(next + 1);
            return true;
        }
        if seq > next {
            self.gaps += 1;
            let width = seq - next;
            if width > MAX_REMEMBERED_GAP {
                self.unremembered += width;
            } else {
                self.missing.extend(next..seq);
            }
            self.note(format!("gap: expected {next}, got {seq}"));
            self.next = Some(seq + 1);
        } else if self.missing.remove(&seq) {
            self.reordered += 1;
            self.note(format!("reordered: {seq} arrived after {}", next - 1));
        } else {
            self.duplicates += 1;
            self.note(format!("duplicate: {seq} again (at {})", next - 1));
        }
        false
    }

    fn note(&mut self, p: String) {
        if self.first_problem.is_none() {
            self.first_problem = Some(p);
        }
    }

    /// The verdict once the stream is over, given the last sequence number that was sent
    /// (`None`: nothing was sent).
    #[cfg(test)]
    pub fn finish(&self, last_sent: Option<u64>) -> CheckResult {
        self.finish_expecting(last_sent, 1)
    }

    /// [`StreamChecker::finish`] for a stream that should have carried at least `expected`
    /// messages: an unstarted stream that received nothing lost that many (it cannot know
    /// where it would have started).
    pub fn finish_expecting(&self, last_sent: Option<u64>, expected: u64) -> CheckResult {
        let mut r = CheckResult {
            streams: 1,
            received: self.received,
            duplicates: self.duplicates,
            reordered: self.reordered,
            gaps: self.gaps,
            lost: self.missing.len() as u64 + self.unremembered,
            ..CheckResult::default()
        };
        if let Some(p) = &self.first_problem {
            r.problem(p.clone());
        }
        match (self.next, last_sent) {
            (Some(next), Some(last)) if last >= next => {
                r.lost += last - next + 1;
                r.problem(format!(
                    "lost the tail: last received {}, last sent {last}",
                    next - 1
                ));
            }
            (Some(next), Some(last)) if next > last + 1 => {
                r.problem(format!("received {} past the last sent {last}", next - 1));
            }
            (None, Some(last)) => {
                r.lost += expected.max(1);
                r.problem(format!("received nothing; last sent {last}"));
            }
            _ => {}
        }
        r
    }
}

/// An order-sensitive checksum of message ids (FNV-1a style over 64-bit words).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checksum(pub u64);

impl Default for Checksum {
    fn default() -> Self {
        Checksum(0xcbf2_9ce4_8422_2325)
    }
}

impl Checksum {
    pub fn add(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(0x0000_0100_0000_01b3);
    }

    pub fn of(ids: impl IntoIterator<Item = u64>) -> Checksum {
        let mut c = Checksum::default();
        for id in ids {
            c.add(id);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u64], last: Option<u64>) -> CheckResult {
        let mut c = StreamChecker::starting_at(1);
        for &s in seqs {
            c.observe(s);
        }
        c.finish(last)
    }

    #[test]
    fn in_order_and_complete_is_ok() {
        let r = run(&[1, 2, 3, 4], Some(4));
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.received, 4);
    }

    #[test]
    fn nothing_sent_nothing_received_is_ok() {
        assert!(run(&[], None).ok());
    }

    #[test]
    fn detects_loss_in_the_middle() {
        let r = run(&[1, 2, 4, 5], Some(5));
        assert!(!r.ok());
        assert_eq!(r.lost, 1);
        assert_eq!(r.gaps, 1);
        assert_eq!(r.reordered, 0);
        assert!(r.problems[0].contains("expected 3, got 4"), "{r:?}");
    }

    #[test]
    fn detects_loss_at_the_tail() {
        let r = run(&[1, 2, 3], Some(5));
        assert!(!r.ok());
        assert_eq!(r.lost, 2);
        assert_eq!(r.gaps, 0);
    }

    #[test]
    fn detects_loss_at_the_head() {
        let r = run(&[2, 3], Some(3));
        assert_eq!(r.lost, 1);
        assert!(!r.ok());
    }

    #[test]
    fn detects_duplicates() {
        let r = run(&[1, 2, 2, 3], Some(3));
        assert!(!r.ok());
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.lost, 0);
    }

    #[test]
    fn detects_reorder() {
        let r = run(&[1, 3, 2, 4], Some(4));
        assert!(!r.ok());
        assert_eq!(r.reordered, 1);
        assert_eq!(r.lost, 0);
        assert_eq!(r.duplicates, 0);
        assert_eq!(r.gaps, 1);
    }

    #[test]
    fn a_repeat_of_a_late_message_is_a_duplicate() {
        let r = run(&[1, 3, 2, 2], Some(3));
        assert_eq!(r.reordered, 1);
        assert_eq!(r.duplicates, 1);
    }

    #[test]
    fn detects_nothing_received() {
        let r = run(&[], Some(2));
        assert!(!r.ok());
        assert_eq!(r.lost, 2);
    }

    #[test]
    fn unstarted_checker_takes_first_seen_as_start() {
        let mut c = StreamChecker::unstarted();
        assert!(!c.started());
        assert!(c.observe(41));
        assert!(c.observe(42));
        assert_eq!(c.last(), Some(42));
        assert!(c.finish(Some(42)).ok());
        let empty = StreamChecker::unstarted().finish(Some(1));
        assert!(!empty.ok());
        assert_eq!(empty.lost, 1);
        // Of a stream that should have carried 40 messages, all 40 are lost.
        let empty = StreamChecker::unstarted().finish_expecting(Some(90), 40);
        assert_eq!(empty.lost, 40);
        assert!(empty.problems[0].contains("received nothing"), "{empty:?}");
    }

    #[test]
    fn huge_gaps_are_counted_without_memory() {
        let r = run(&[1, 10_000_002], Some(10_000_002));
        assert_eq!(r.lost, 10_000_000);
    }

    #[test]
    fn results_add_up() {
        let mut total = CheckResult::default();
        total.add(run(&[1, 2], Some(2)));
        total.add(run(&[1, 1], Some(1)));
        assert_eq!(total.streams, 2);
        assert_eq!(total.duplicates, 1);
        assert!(!total.ok());
        let mut misrouted = CheckResult {
            misrouted: 1,
            ..CheckResult::default()
        };
        assert!(!misrouted.ok());
        misrouted.misrouted = 0;
        assert!(misrouted.ok());
    }

    #[test]
    fn checksum_is_order_sensitive() {
        assert_eq!(Checksum::of([1, 2, 3]), Checksum::of([1, 2, 3]));
        assert_ne!(Checksum::of([1, 2, 3]), Checksum::of([1, 3, 2]));
        assert_ne!(Checksum::of([1, 2, 3]), Checksum::of([1, 2]));
    }
}
