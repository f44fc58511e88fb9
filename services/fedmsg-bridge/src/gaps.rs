//! Spotting bus messages the bridge never saw, from fedmsg's per-process sequence number `i`.
//!
//! Every fedmsg producer numbers what it sends: 1, 2, 3, … per process. The bridge remembers the
//! last `i` it saw from each sender; a jump means messages were lost on the way (ZeroMQ's
//! high-water mark dropped them while the broker was away, the network cut the subscription, a
//! relay lost them). A number that goes back means the sender restarted and counts from 1 again:
//! not a gap. The envelope does not name the sending process, so a sender is approximated by
//! (endpoint, `username`, the topic's service prefix); two processes of one service under one
//! user behind one relay would interleave their numbers, so on such an endpoint a gap is a hint to
//! look (and backfill from datagrepper, see docs/deploy.md), not a proof.
//!
//! What the bridge itself misses while it is down is not seen here (it remembers nothing across a
//! restart): that is what running two bridges covers.

use std::collections::HashMap;

/// At most this many senders are remembered; beyond that the memory starts afresh, so a flood of
/// invented usernames or topics cannot grow the bridge without bound (the cost: a gap right after
/// the reset goes unnoticed).
pub const MAX_SENDERS: usize = 10_000;

/// What one sequence number says about the sender's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    /// The first message from this sender since the bridge started: nothing to compare with.
    First,
    /// The number after the last one.
    InOrder,
    /// `missing` messages between the last one and this one never arrived.
    Gap { missing: u64 },
    /// The same number or a lower one: the sender restarted (or repeated itself). Counting
    /// starts again from here.
    Restarted,
}

/// The last sequence number of every sender seen.
#[derive(Debug, Default)]
pub struct GapDetector {
    last: HashMap<String, u64>,
}

impl GapDetector {
    /// Record `i` from `sender` and say what it means.
    pub fn observe(&mut self, sender: &str, i: u64) -> Sequence {
        if !self.last.contains_key(sender) && self.last.len() >= MAX_SENDERS {
            self.last.clear();
        }
        match self.last.insert(sender.to_string(), i) {
            None => Sequence::First,
            Some(last) if last.checked_add(1) == Some(i) => Sequence::InOrder,
            Some(last) if i > last => Sequence::Gap {
                missing: i - last - 1,
            },
            Some(_) => Sequence::Restarted,
        }
    }
}

/// The sender a message is attributed to: its endpoint (`fedmsg:<endpoint>`), its `username`
/// and the first four components of its topic (`org.fedoraproject.prod.bodhi`: the producing
/// service).
pub fn sender_of(source: &str, username: Option<&str>, topic: &str) -> String {
    let service: Vec<&str> = topic.splitn(5, '.').take(4).collect();
    format!("{source} {} {}", username.unwrap_or("-"), service.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_are_gaps_and_a_lower_number_is_a_restart() {
        let mut d = GapDetector::default();
        assert_eq!(d.observe("a", 5), Sequence::First);
        assert_eq!(d.observe("a", 6), Sequence::InOrder);
        assert_eq!(d.observe("a", 10), Sequence::Gap { missing: 3 });
        assert_eq!(d.observe("a", 11), Sequence::InOrder);
        // The sender restarted: it counts from 1 again, and the next one is in order.
        assert_eq!(d.observe("a", 1), Sequence::Restarted);
        assert_eq!(d.observe("a", 2), Sequence::InOrder);
        assert_eq!(d.observe("a", 2), Sequence::Restarted);
        // Senders are independent.
        assert_eq!(d.observe("b", 100), Sequence::First);
        assert_eq!(d.observe("a", 3), Sequence::InOrder);
        assert_eq!(d.observe("b", 102), Sequence::Gap { missing: 1 });
    }

    #[test]
    fn the_largest_numbers_do_not_overflow() {
        let mut d = GapDetector::default();
        d.observe("a", u64::MAX - 1);
        assert_eq!(d.observe("a", u64::MAX), Sequence::InOrder);
        assert_eq!(d.observe("a", u64::MAX), Sequence::Restarted);
        d.observe("b", 0);
        assert_eq!(
            d.observe("b", u64::MAX),
            Sequence::Gap {
                missing: u64::MAX - 1
            }
        );
    }

    #[test]
    fn memory_is_bounded() {
        let mut d = GapDetector::default();
        for n in 0..MAX_SENDERS {
            d.observe(&n.to_string(), 1);
        }
        assert_eq!(d.observe("0", 3), Sequence::Gap { missing: 1 });
        // One sender too many: everything is forgotten, so "0" starts afresh.
        assert_eq!(d.observe("new", 1), Sequence::First);
        assert_eq!(d.last.len(), 1);
        assert_eq!(d.observe("0", 9), Sequence::First);
    }

    #[test]
    fn a_sender_is_endpoint_user_and_service() {
        assert_eq!(
            sender_of(
                "fedmsg:tcp://h:9940",
                Some("apache"),
                "org.fedoraproject.prod.buildsys.build.state.change"
            ),
            "fedmsg:tcp://h:9940 apache org.fedoraproject.prod.buildsys"
        );
        assert_eq!(sender_of("s", None, "a.b"), "s - a.b");
    }
}
