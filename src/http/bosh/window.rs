//! XEP-0124 §14 request ids, without I/O: which requests are next, early (held until the
//! gap fills), repeated (answered from the response cache, §14.3) or out of the window.

use bytes::Bytes;
use std::collections::VecDeque;

/// Where a request's rid falls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rid {
    /// The next rid: process it now.
    Next,
    /// Ahead of the next one but inside the window: keep it until the gap is filled.
    Early,
    /// Already answered; this is the response that was sent (§14.3: send it again).
    Answered(Bytes),
    /// Already processed, not answered yet (still held), or answered too long ago to be
    /// remembered: the caller decides (§14.3: a held one is replaced, a forgotten one is
    /// `item-not-found`).
    Processed,
    /// Beyond the window (§14.2: `item-not-found`).
    Beyond,
}

#[derive(Debug)]
pub struct Window {
    /// The rid expected next (one more than the last processed).
    next: u64,
    /// Window size and number of responses remembered: the session's 'requests'.
    size: u64,
    /// Recent responses, oldest first, by rid.
    answered: VecDeque<(u64, Bytes)>,
}

impl Window {
    /// A window after the session creation request `first_rid` (already processed).
    pub fn new(first_rid: u64, size: u64) -> Window {
        Window {
            next: first_rid.saturating_add(1),
            size: size.max(1),
            answered: VecDeque::new(),
        }
    }

    pub fn next(&self) -> u64 {
        self.next
    }

    pub fn classify(&self, rid: u64) -> Rid {
        if rid == self.next {
            Rid::Next
        } else if rid > self.next {
            // §14.2: within 'requests' of the last processed rid (next - 1).
            if rid - (self.next - 1) <= self.size {
                Rid::Early
            } else {
                Rid::Beyond
            }
        } else {
            match self.answered.iter().find(|(r, _)| *r == rid) {
                Some((_, body)) => Rid::Answered(body.clone()),
                None => Rid::Processed,
            }
        }
    }

    /// The next rid was processed.
    pub fn advance(&mut self) {
        self.next = self.next.saturating_add(1);
    }

    /// Remember the response sent for `rid` (§14.3), forgetting the oldest beyond 'requests'.
    pub fn answered(&mut self, rid: u64, body: Bytes) {
        self.answered.push_back((rid, body));
        while self.answered.len() as u64 > self.size {
            self.answered.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_early_beyond() {
        let mut w = Window::new(100, 2);
        assert_eq!(w.next(), 101);
        assert_eq!(w.classify(101), Rid::Next);
        assert_eq!(w.classify(102), Rid::Early);
        assert_eq!(w.classify(103), Rid::Beyond);
        assert_eq!(w.classify(u64::MAX), Rid::Beyond);
        w.advance();
        assert_eq!(w.classify(103), Rid::Early);
        assert_eq!(w.classify(101), Rid::Processed);
    }

    #[test]
    fn remembers_the_last_responses() {
        let mut w = Window::new(10, 2);
        for rid in 11..=13 {
            assert_eq!(w.classify(rid), Rid::Next);
            w.advance();
            w.answered(rid, Bytes::from(format!("r{rid}")));
        }
        assert_eq!(w.classify(13), Rid::Answered(Bytes::from("r13")));
        assert_eq!(w.classify(12), Rid::Answered(Bytes::from("r12")));
        // Forgotten: more than 'requests' ago.
        assert_eq!(w.classify(11), Rid::Processed);
        assert_eq!(w.classify(10), Rid::Processed);
    }

    #[test]
    fn window_of_one() {
        let w = Window::new(0, 0);
        assert_eq!(w.classify(1), Rid::Next);
        assert_eq!(w.classify(2), Rid::Beyond);
    }
}
