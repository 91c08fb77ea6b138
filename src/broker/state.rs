//! The broker's shared state: sessions, the subscription tree and retained messages,
//! behind one mutex that is never held across an `.await`. Every method here is
//! synchronous and returns the store operations its change needs; callers commit them
//! (and wait when the change acknowledges something) outside the lock.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use bytestring::ByteString;

use super::auth::acl::Access;
use super::auth::realm::Realms;
use super::codec::{Qos, SubscriptionOptions};
use super::session::{
    self, Message, Queued, RETAINED, Session, Subscription, TreeEntry, encode_queued,
    encode_retained, queue_key,
};
use super::signal::Signal;
use super::topic::{self, Filter, Matched, Tree};
use crate::store::Op;

/// Where one routed message goes: `(client id, delivery)`, plus the store operations
/// that make it durable for persistent sessions.
#[derive(Default)]
pub struct RoutePlan {
    /// Deliveries to push into session queues once the operations are durable.
    pub deliveries: Vec<(ByteString, Queued)>,
    /// Store operations (queue entries for persistent sessions, retained changes).
    pub ops: Vec<Op>,
    /// Whether any subscription matched (v5 "no matching subscribers" otherwise).
    pub matched: bool,
}

/// All sessions, subscriptions and retained messages.
pub struct State {
    /// Sessions by client id.
    /// Boxed: the map's buckets are sized for its capacity, which runs ahead of the
    /// number of sessions, and a session is a few hundred bytes.
    pub sessions: HashMap<ByteString, Box<Session>>,
    /// Every listener's authentication and ACL rules (replaced on reload).
    pub realms: Realms,
    /// Every subscription of every session.
    pub tree: Tree<TreeEntry>,
    /// Retained messages by topic.
    pub retained: HashMap<ByteString, Arc<Message>>,
    /// Next queue sequence number.
    pub next_seq: u64,
    /// Round-robin position per shared group.
    share_cursor: HashMap<ByteString, usize>,
    /// Most messages queued per session.
    pub max_queued: usize,
    /// Whether anything is written to the store.
    pub durable: bool,
}

impl State {
    /// Empty state.
    pub fn new(max_queued: usize, durable: bool) -> Self {
        State {
            realms: Realms::default(),
            sessions: HashMap::new(),
            tree: Tree::default(),
            retained: HashMap::new(),
            next_seq: 1,
            share_cursor: HashMap::new(),
            max_queued,
            durable,
        }
    }

    /// Plans the delivery of `msg` to every matching subscription. Nothing changes
    /// until [`State::apply`] runs with the plan.
    pub fn route(&mut self, msg: &Arc<Message>) -> RoutePlan {
        let mut plan = RoutePlan::default();
        let topic = msg.publish.topic.clone();
        let mut matched = Vec::new();
        self.tree.matching(&topic, &mut matched);
        plan.matched = !matched.is_empty();
        // Ordinary subscriptions: one delivery per client even when several of its
        // filters match (the highest QoS, every subscription id) [MQTT-3.3.4-2].
        let mut per_client: HashMap<ByteString, (SubscriptionOptions, Vec<NonZeroU32>)> =
            HashMap::new();
        let mut shared: Vec<(ByteString, Vec<(ByteString, TreeEntry)>)> = Vec::new();
        for m in matched {
            match m {
                Matched::One(client, entry) => {
                    if entry.options.no_local && *client == msg.from {
                        continue;
                    }
                    let slot = per_client
                        .entry(client.clone())
                        .or_insert((entry.options, Vec::new()));
                    if entry.options.qos > slot.0.qos {
                        slot.0.qos = entry.options.qos;
                    }
                    slot.0.retain_as_published |= entry.options.retain_as_published;
                    slot.1.extend(entry.id);
                }
                Matched::Group(group, members) => {
                    shared.push((group.clone(), members.to_vec()));
                }
            }
        }
        for (client, (options, ids)) in per_client {
            self.plan_delivery(msg, &client, options, ids, None, &mut plan);
        }
        for (group, members) in shared {
            if let Some((client, entry)) = self.pick_member(&group, &members) {
                let share = self.share_filter_of(&client, &group, &topic);
                self.plan_delivery(
                    msg,
                    &client,
                    entry.options,
                    entry.id.into_iter().collect(),
                    share,
                    &mut plan,
                );
            }
        }
        plan
    }

    /// The raw `$share/group/filter` of `client` that matched `topic`.
    fn share_filter_of(
        &self,
        client: &ByteString,
        group: &ByteString,
        topic: &str,
    ) -> Option<ByteString> {
        let session = self.sessions.get(client)?;
        session
            .subscriptions
            .iter()
            .find(|(_, sub)| {
                sub.filter.share_group.as_ref() == Some(group)
                    && topic::matches(&sub.filter.filter, topic)
            })
            .map(|(raw, _)| raw.clone())
    }

    /// One member of a shared group, round robin, preferring connected ones.
    fn pick_member(
        &mut self,
        group: &ByteString,
        members: &[(ByteString, TreeEntry)],
    ) -> Option<(ByteString, TreeEntry)> {
        let cursor = self.share_cursor.entry(group.clone()).or_insert(0);
        let start = *cursor;
        let n = members.len();
        let online = |client: &ByteString| {
            self.sessions
                .get(client)
                .is_some_and(|s| s.attached.is_some())
        };
        let pick = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| online(&members[i].0))
            .or_else(|| (n > 0).then_some(start % n))?;
        *cursor = pick + 1;
        Some(members[pick].clone())
    }

    fn plan_delivery(
        &mut self,
        msg: &Arc<Message>,
        client: &ByteString,
        options: SubscriptionOptions,
        subscription_ids: Vec<NonZeroU32>,
        share: Option<ByteString>,
        plan: &mut RoutePlan,
    ) {
        let Some(session) = self.sessions.get_mut(client) else {
            return;
        };
        // Every delivery is checked, so a `#` subscriber never receives a topic it
        // may not read.
        if !self
            .realms
            .may(client, session, &msg.publish.topic, Access::Read)
        {
            return;
        }
        let qos = msg.publish.qos.min(options.qos);
        // Offline sessions keep QoS 1/2 only, as Mosquitto does by default.
        if session.attached.is_none() && qos == Qos::AtMostOnce {
            return;
        }
        // The bound is applied here, before anything is written, so a message dropped
        // for a full queue cannot come back from the store after a restart. Deliveries
        // planned but not yet applied may overshoot it by a commit's worth.
        // 0 is no limit, as in Mosquitto.
        if self.max_queued > 0 && session.queue.len() >= self.max_queued {
            session.dropped = session.dropped.saturating_add(1);
            if session.dropped == 1 || session.dropped.is_power_of_two() {
                tracing::warn!(
                    client = %client,
                    dropped = session.dropped,
                    "queue full (max_queued_messages): dropping messages for this client"
                );
            }
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let queued = Queued {
            seq,
            msg: msg.clone(),
            qos,
            // A normal delivery clears retain unless the subscriber asked to keep it
            // [MQTT-3.3.1-9, MQTT-3.3.1-12].
            retain: options.retain_as_published && msg.publish.retain,
            subscription_ids,
            share,
            packet_id: None,
            released: false,
        };
        if self.durable && session.persistent() && qos != Qos::AtMostOnce {
            plan.ops.push(Op::Put {
                table: session::QUEUE,
                key: queue_key(client, seq),
                value: encode_queued(&queued),
            });
        }
        plan.deliveries.push((client.clone(), queued));
    }

    /// Pushes planned deliveries into their sessions; returns the connections to wake.
    pub fn apply(&mut self, plan: Vec<(ByteString, Queued)>) -> Vec<Arc<Signal>> {
        let mut wake = Vec::new();
        for (client, queued) in plan {
            let Some(session) = self.sessions.get_mut(&client) else {
                continue;
            };
            session.queue.push_back(queued);
            if let Some(attached) = &session.attached {
                wake.push(attached.signal.clone());
            }
        }
        wake
    }

    /// Updates the retained store for `msg` (retain flag set); returns its store op.
    pub fn retain(&mut self, msg: &Arc<Message>) -> Option<Op> {
        let topic = msg.publish.topic.clone();
        let key = topic.as_bytes().to_vec();
        if msg.publish.payload.is_empty() {
            // An empty retained payload clears it [MQTT-3.3.1-10].
            self.retained.remove(&topic)?;
            return (self.durable && !topic.starts_with("$SYS/")).then_some(Op::Delete {
                table: RETAINED,
                key,
            });
        }
        let persist = self.durable && !topic.starts_with("$SYS/");
        self.retained.insert(topic, msg.clone());
        // `$SYS` is recomputed every interval and never written [DESIGN: store].
        persist.then(|| Op::Put {
            table: RETAINED,
            key,
            value: encode_retained(msg),
        })
    }

    /// Adds (or replaces) a subscription; returns whether it is new.
    pub fn subscribe(&mut self, client: &ByteString, raw: ByteString, sub: Subscription) -> bool {
        let new = self.tree.insert(
            &sub.filter,
            client,
            TreeEntry {
                options: sub.options,
                id: sub.id,
            },
        );
        if let Some(session) = self.sessions.get_mut(client) {
            session.subscriptions.insert(raw, sub);
        }
        new
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&mut self, client: &ByteString, raw: &ByteString) -> bool {
        let Some(session) = self.sessions.get_mut(client) else {
            return false;
        };
        let Some(sub) = session.subscriptions.remove(raw) else {
            return false;
        };
        self.tree.remove(&sub.filter, client)
    }

    /// Retained messages matching `filter` (not for shared subscriptions).
    pub fn retained_for(&self, filter: &Filter) -> Vec<Arc<Message>> {
        if filter.share_group.is_some() {
            // Retained messages are not sent for shared subscriptions [MQTT-4.8.2-4 (v5)].
            return Vec::new();
        }
        self.retained
            .values()
            .filter(|msg| topic::matches(&filter.filter, &msg.publish.topic))
            .cloned()
            .collect()
    }

    /// Removes a session and its subscriptions from memory.
    pub fn remove_session(&mut self, client: &ByteString) -> Option<Box<Session>> {
        let session = self.sessions.remove(client)?;
        for sub in session.subscriptions.values() {
            self.tree.remove(&sub.filter, client);
        }
        Some(session)
    }

    /// The messages of `client` that came through shared subscriptions, taken out of
    /// its session so another member can have them (the member disconnected).
    pub fn take_shared(&mut self, client: &ByteString) -> Vec<Queued> {
        let Some(session) = self.sessions.get_mut(client) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        let inflight = std::mem::take(&mut session.inflight);
        for (id, queued) in inflight {
            // A QoS 2 message already PUBRECed has been received; it stays.
            if queued.share.is_some() && !queued.released {
                taken.push(queued);
            } else {
                session.inflight.insert(id, queued);
            }
        }
        let queue = std::mem::take(&mut session.queue);
        for queued in queue {
            if queued.share.is_some() {
                taken.push(queued);
            } else {
                session.queue.push_back(queued);
            }
        }
        taken
    }

    /// Plans redelivery of `taken` (from [`State::take_shared`]) to other members of
    /// their groups, excluding `from`.
    pub fn reroute_shared(&mut self, from: &ByteString, taken: Vec<Queued>) -> RoutePlan {
        let mut plan = RoutePlan::default();
        for queued in taken {
            let Some(raw) = queued.share.clone() else {
                continue;
            };
            let Ok(filter) = topic::parse_filter(&raw) else {
                continue;
            };
            let Some(group) = filter.share_group.clone() else {
                continue;
            };
            // Members of the same group with the same filter, other than `from`.
            let mut members = Vec::new();
            for (client, session) in &self.sessions {
                if client == from {
                    continue;
                }
                if let Some(sub) = session.subscriptions.get(&raw) {
                    members.push((
                        client.clone(),
                        TreeEntry {
                            options: sub.options,
                            id: sub.id,
                        },
                    ));
                }
            }
            members.sort_by(|a, b| a.0.cmp(&b.0));
            if let Some((client, entry)) = self.pick_member(&group, &members) {
                let mut msg_plan = RoutePlan::default();
                self.plan_delivery(
                    &queued.msg,
                    &client,
                    entry.options,
                    entry.id.into_iter().collect(),
                    Some(raw.clone()),
                    &mut msg_plan,
                );
                plan.ops.extend(msg_plan.ops);
                plan.deliveries.extend(msg_plan.deliveries);
                if self.durable {
                    plan.ops.push(Op::Delete {
                        table: session::QUEUE,
                        key: queue_key(from, queued.seq),
                    });
                }
            } else if let Some(session) = self.sessions.get_mut(from) {
                // Nobody else: keep it where it was.
                session.queue.push_front(Queued {
                    packet_id: None,
                    ..queued
                });
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::codec::Version;
    use crate::broker::session::test_message as message;

    #[test]
    fn a_message_over_max_queued_is_neither_queued_nor_written() {
        let mut state = State::new(2, true);
        let client = ByteString::from("offline");
        state.sessions.insert(
            client.clone(),
            Box::new(Session::new(u32::MAX, Version::V311)),
        );
        state.subscribe(
            &client,
            "t".into(),
            Subscription {
                filter: topic::parse_filter(&"t".into()).unwrap(),
                options: SubscriptionOptions::qos(Qos::AtLeastOnce),
                id: None,
            },
        );
        let mut written = 0;
        for payload in ["one", "two", "three"] {
            let plan = state.route(&message(payload));
            written += plan.ops.len();
            state.apply(plan.deliveries);
        }
        // Two queued and written; the third dropped before any store write, so a
        // restart cannot bring it back past the bound.
        assert_eq!(written, 2);
        let queued: Vec<&[u8]> = state.sessions[&client]
            .queue
            .iter()
            .map(|q| &q.msg.publish.payload[..])
            .collect();
        assert_eq!(queued, [&b"one"[..], b"two"]);
        assert_eq!(state.sessions[&client].dropped, 1);
    }
}
