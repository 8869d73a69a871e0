//! Acknowledging MQTT messages in the order they arrived, whatever order the gateway's
//! workers finish them in.
//!
//! MQTT 3.1.1 §4.6: a receiver "MUST send PUBACK packets in the order in which the
//! corresponding PUBLISH packets were received". With manual acks (the durable lane
//! acknowledges a progress message only once Kafka has it) parallel workers finish out of
//! order; Mosquitto tolerates that, rumqttd disconnects the client ("unsolicited/ooo
//! ack"). Each incoming message takes a ticket in arrival order; a worker records its
//! outcome; acknowledgements are released only as a contiguous prefix of tickets.
//! A message that will never be acknowledged (shed progress, shutdown) is recorded
//! as such and skipped, so it cannot hold back the ones after it.
//!
//! Pure: the gateway owns the IO (see `gateway::AckSender`).

use std::collections::BTreeMap;

/// A message's place in arrival order on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    connection: u64,
    index: u64,
}

/// Outcomes waiting for the messages that arrived before them.
#[derive(Debug)]
pub struct AckOrder<T> {
    connection: u64,
    next_ticket: u64,
    next_release: u64,
    /// Finished messages not yet released: `Some` to acknowledge, `None` never.
    finished: BTreeMap<u64, Option<T>>,
}

impl<T> Default for AckOrder<T> {
    fn default() -> Self {
        AckOrder {
            connection: 0,
            next_ticket: 0,
            next_release: 0,
            finished: BTreeMap::new(),
        }
    }
}

impl<T> AckOrder<T> {
    /// The next message in arrival order.
    pub fn ticket(&mut self) -> Ticket {
        let ticket = Ticket {
            connection: self.connection,
            index: self.next_ticket,
        };
        self.next_ticket += 1;
        ticket
    }

    /// A new connection: packet ids start over, and what the old one did not
    /// acknowledge the broker redelivers (or has dropped). Outcomes of the old
    /// connection's tickets are ignored from now on.
    pub fn reconnected(&mut self) {
        self.connection += 1;
        self.next_ticket = 0;
        self.next_release = 0;
        self.finished.clear();
    }

    /// Records how the message of `ticket` ended: `Some(ack)` to acknowledge it, `None`
    /// never to.
    pub fn finish(&mut self, ticket: Ticket, ack: Option<T>) {
        if ticket.connection == self.connection && ticket.index >= self.next_release {
            self.finished.insert(ticket.index, ack);
        }
    }

    /// Whether [`AckOrder::release`] would return something.
    pub fn ready(&self) -> bool {
        self.finished.contains_key(&self.next_release)
    }

    /// The acknowledgements now due, in arrival order: those of the finished messages
    /// with no unfinished message before them.
    pub fn release(&mut self) -> Vec<T> {
        let mut due = Vec::new();
        while let Some(outcome) = self.finished.remove(&self.next_release) {
            self.next_release += 1;
            due.extend(outcome);
        }
        due
    }

    /// Messages taken and not yet released.
    pub fn pending(&self) -> u64 {
        self.next_ticket - self.next_release
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn acknowledgements_wait_for_every_earlier_message() {
        let mut order = AckOrder::default();
        let (a, b, c) = (order.ticket(), order.ticket(), order.ticket());
        order.finish(c, Some("c"));
        order.finish(b, Some("b"));
        assert!(!order.ready());
        assert_eq!(
            order.release(),
            Vec::<&str>::new(),
            "a is still in a worker"
        );
        order.finish(a, Some("a"));
        assert_eq!(order.release(), vec!["a", "b", "c"]);
        assert_eq!(order.pending(), 0);
    }

    #[test]
    fn a_message_never_acknowledged_does_not_hold_back_later_ones() {
        let mut order = AckOrder::default();
        let (a, b) = (order.ticket(), order.ticket());
        order.finish(b, Some("b"));
        order.finish(a, None);
        assert_eq!(order.release(), vec!["b"]);
    }

    #[test]
    fn outcomes_from_a_previous_connection_are_ignored() {
        let mut order = AckOrder::default();
        let old = order.ticket();
        order.reconnected();
        let new = order.ticket();
        order.finish(old, Some("old"));
        assert!(
            !order.ready(),
            "the old ticket is not this connection's first"
        );
        order.finish(new, Some("new"));
        assert_eq!(order.release(), vec!["new"]);
    }

    proptest! {
        /// Whatever order workers finish in, acknowledgements leave in arrival order,
        /// each exactly once, and all of them once every message finished.
        #[test]
        fn acks_leave_in_arrival_order(
            finish_order in (1usize..40).prop_flat_map(|n| Just((0..n).collect::<Vec<_>>()).prop_shuffle()),
            skipped in proptest::collection::vec(any::<bool>(), 40),
        ) {
            let n = finish_order.len();
            let mut order = AckOrder::default();
            let tickets: Vec<Ticket> = (0..n).map(|_| order.ticket()).collect();
            let mut released = Vec::new();
            for &i in &finish_order {
                order.finish(tickets[i], (!skipped[i]).then_some(i));
                released.extend(order.release());
            }
            let expected: Vec<usize> = (0..n).filter(|i| !skipped[*i]).collect();
            prop_assert_eq!(released, expected);
            prop_assert_eq!(order.pending(), 0);
        }
    }
}
