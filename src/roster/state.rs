//! The RFC 6121 §3 subscription state machine as pure functions, transcribed from the tables
//! of RFC 6121 Appendix A (A.2 outbound, A.3 inbound) so the I/O code only applies outcomes.

use crate::storage::Subscription;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubType {
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
}

impl SubType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "subscribe" => Some(SubType::Subscribe),
            "subscribed" => Some(SubType::Subscribed),
            "unsubscribe" => Some(SubType::Unsubscribe),
            "unsubscribed" => Some(SubType::Unsubscribed),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            SubType::Subscribe => "subscribe",
            SubType::Subscribed => "subscribed",
            SubType::Unsubscribe => "unsubscribe",
            SubType::Unsubscribed => "unsubscribed",
        }
    }
}

/// One side's view of one contact: subscription, Pending Out ('ask'), Pending In, and the
/// pre-approval flag of RFC 6121 §3.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubState {
    pub sub: Subscription,
    pub pending_out: bool,
    pub pending_in: bool,
    pub approved: bool,
}

impl SubState {
    pub const NONE: SubState = SubState {
        sub: Subscription::None,
        pending_out: false,
        pending_in: false,
        approved: false,
    };
    fn has_to(self) -> bool {
        matches!(self.sub, Subscription::To | Subscription::Both)
    }
    fn has_from(self) -> bool {
        matches!(self.sub, Subscription::From | Subscription::Both)
    }
    fn with(self, to: bool, from: bool) -> SubState {
        let sub = match (to, from) {
            (false, false) => Subscription::None,
            (true, false) => Subscription::To,
            (false, true) => Subscription::From,
            (true, true) => Subscription::Both,
        };
        SubState { sub, ..self }
    }
}

/// Outcome of a stanza the local user sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outbound {
    pub state: SubState,
    /// Route the stanza to the contact.
    pub route: bool,
}

/// RFC 6121 Appendix A.2 (and §3.4 pre-approval for "subscribed" without a pending request).
pub fn outbound(s: SubState, t: SubType) -> Outbound {
    match t {
        // A.2.1: routed in every state; Pending Out is set unless already subscribed.
        SubType::Subscribe => Outbound {
            state: if s.has_to() {
                s
            } else {
                SubState {
                    pending_out: true,
                    ..s
                }
            },
            route: true,
        },
        // A.2.2: clears the 'to' half and Pending Out; routed in every state (§3.3.2).
        SubType::Unsubscribe => Outbound {
            state: SubState {
                pending_out: false,
                ..s.with(false, s.has_from())
            },
            route: true,
        },
        // A.2.3: approves a pending request; otherwise (without 'from') it is a pre-approval,
        // which is not routed.
        SubType::Subscribed => {
            if s.pending_in {
                Outbound {
                    state: SubState {
                        pending_in: false,
                        approved: false,
                        ..s.with(s.has_to(), true)
                    },
                    route: true,
                }
            } else if !s.has_from() {
                Outbound {
                    state: SubState {
                        approved: true,
                        ..s
                    },
                    route: false,
                }
            } else {
                Outbound {
                    state: s,
                    route: false,
                }
            }
        }
        // A.2.4: cancels 'from' or denies Pending In; routed only if something changed.
        SubType::Unsubscribed => {
            let next = SubState {
                pending_in: false,
                approved: false,
                ..s.with(s.has_to(), false)
            };
            Outbound {
                route: next.sub != s.sub || next.pending_in != s.pending_in,
                state: next,
            }
        }
    }
}

/// Outcome of a stanza arriving for the local user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inbound {
    pub state: SubState,
    /// Deliver the stanza to the user's available resources.
    pub deliver: bool,
    /// Answer on the user's behalf with `subscribed` (already subscribed, or pre-approved).
    pub auto_subscribed: bool,
}

/// RFC 6121 Appendix A.3.
pub fn inbound(s: SubState, t: SubType) -> Inbound {
    let unchanged = Inbound {
        state: s,
        deliver: false,
        auto_subscribed: false,
    };
    match t {
        // A.3.1
        SubType::Subscribe => {
            if s.has_from() {
                Inbound {
                    auto_subscribed: true,
                    ..unchanged
                }
            } else if s.approved {
                Inbound {
                    state: SubState {
                        approved: false,
                        pending_in: false,
                        ..s.with(s.has_to(), true)
                    },
                    deliver: false,
                    auto_subscribed: true,
                }
            } else if s.pending_in {
                unchanged
            } else {
                Inbound {
                    state: SubState {
                        pending_in: true,
                        ..s
                    },
                    deliver: true,
                    auto_subscribed: false,
                }
            }
        }
        // A.3.2: the contact cancels its subscription to us.
        SubType::Unsubscribe => {
            let next = SubState {
                pending_in: false,
                ..s.with(s.has_to(), false)
            };
            Inbound {
                deliver: next != s,
                state: next,
                auto_subscribed: false,
            }
        }
        // A.3.3: only meaningful while we have asked.
        SubType::Subscribed => {
            if s.pending_out && !s.has_to() {
                Inbound {
                    state: SubState {
                        pending_out: false,
                        ..s.with(true, s.has_from())
                    },
                    deliver: true,
                    auto_subscribed: false,
                }
            } else {
                unchanged
            }
        }
        // A.3.4: our subscription (or request) is cancelled or denied.
        SubType::Unsubscribed => {
            let next = SubState {
                pending_out: false,
                ..s.with(false, s.has_from())
            };
            Inbound {
                deliver: next != s,
                state: next,
                auto_subscribed: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Subscription::*;

    fn st(sub: Subscription, po: bool, pi: bool) -> SubState {
        SubState {
            sub,
            pending_out: po,
            pending_in: pi,
            approved: false,
        }
    }

    /// The nine RFC 6121 states in Appendix A order.
    fn all() -> [SubState; 9] {
        [
            st(None, false, false),
            st(None, true, false),
            st(None, false, true),
            st(None, true, true),
            st(To, false, false),
            st(To, false, true),
            st(From, false, false),
            st(From, true, false),
            st(Both, false, false),
        ]
    }

    fn check_out(t: SubType, expected: [(SubState, bool); 9]) {
        for (s, (want, route)) in all().into_iter().zip(expected) {
            let o = outbound(s, t);
            assert_eq!((o.state, o.route), (want, route), "{t:?} from {s:?}");
        }
    }

    fn check_in(t: SubType, expected: [(SubState, bool); 9]) {
        for (s, (want, deliver)) in all().into_iter().zip(expected) {
            let i = inbound(s, t);
            assert_eq!((i.state, i.deliver), (want, deliver), "{t:?} from {s:?}");
        }
    }

    #[test]
    fn a_2_1_outbound_subscribe() {
        check_out(
            SubType::Subscribe,
            [
                (st(None, true, false), true),
                (st(None, true, false), true),
                (st(None, true, true), true),
                (st(None, true, true), true),
                (st(To, false, false), true),
                (st(To, false, true), true),
                (st(From, true, false), true),
                (st(From, true, false), true),
                (st(Both, false, false), true),
            ],
        );
    }

    #[test]
    fn a_2_2_outbound_unsubscribe() {
        check_out(
            SubType::Unsubscribe,
            [
                (st(None, false, false), true),
                (st(None, false, false), true),
                (st(None, false, true), true),
                (st(None, false, true), true),
                (st(None, false, false), true),
                (st(None, false, true), true),
                (st(From, false, false), true),
                (st(From, false, false), true),
                (st(From, false, false), true),
            ],
        );
    }

    #[test]
    fn a_2_3_outbound_subscribed() {
        let pre = |s: SubState| SubState {
            approved: true,
            ..s
        };
        check_out(
            SubType::Subscribed,
            [
                (pre(st(None, false, false)), false),
                (pre(st(None, true, false)), false),
                (st(From, false, false), true),
                (st(From, true, false), true),
                (pre(st(To, false, false)), false),
                (st(Both, false, false), true),
                (st(From, false, false), false),
                (st(From, true, false), false),
                (st(Both, false, false), false),
            ],
        );
    }

    #[test]
    fn a_2_4_outbound_unsubscribed() {
        check_out(
            SubType::Unsubscribed,
            [
                (st(None, false, false), false),
                (st(None, true, false), false),
                (st(None, false, false), true),
                (st(None, true, false), true),
                (st(To, false, false), false),
                (st(To, false, false), true),
                (st(None, false, false), true),
                (st(None, true, false), true),
                (st(To, false, false), true),
            ],
        );
    }

    #[test]
    fn a_3_1_inbound_subscribe() {
        check_in(
            SubType::Subscribe,
            [
                (st(None, false, true), true),
                (st(None, true, true), true),
                (st(None, false, true), false),
                (st(None, true, true), false),
                (st(To, false, true), true),
                (st(To, false, true), false),
                (st(From, false, false), false),
                (st(From, true, false), false),
                (st(Both, false, false), false),
            ],
        );
        assert!(inbound(st(From, false, false), SubType::Subscribe).auto_subscribed);
        let pre = SubState {
            approved: true,
            ..st(To, false, false)
        };
        let i = inbound(pre, SubType::Subscribe);
        assert!(i.auto_subscribed && !i.deliver);
        assert_eq!(i.state, st(Both, false, false));
    }

    #[test]
    fn a_3_2_inbound_unsubscribe() {
        check_in(
            SubType::Unsubscribe,
            [
                (st(None, false, false), false),
                (st(None, true, false), false),
                (st(None, false, false), true),
                (st(None, true, false), true),
                (st(To, false, false), false),
                (st(To, false, false), true),
                (st(None, false, false), true),
                (st(None, true, false), true),
                (st(To, false, false), true),
            ],
        );
    }

    #[test]
    fn a_3_3_inbound_subscribed() {
        check_in(
            SubType::Subscribed,
            [
                (st(None, false, false), false),
                (st(To, false, false), true),
                (st(None, false, true), false),
                (st(To, false, true), true),
                (st(To, false, false), false),
                (st(To, false, true), false),
                (st(From, false, false), false),
                (st(Both, false, false), true),
                (st(Both, false, false), false),
            ],
        );
    }

    #[test]
    fn a_3_4_inbound_unsubscribed() {
        check_in(
            SubType::Unsubscribed,
            [
                (st(None, false, false), false),
                (st(None, false, false), true),
                (st(None, false, true), false),
                (st(None, false, true), true),
                (st(None, false, false), true),
                (st(None, false, true), true),
                (st(From, false, false), false),
                (st(From, false, false), true),
                (st(From, false, false), true),
            ],
        );
    }
}
