//! Topic names, topic filters and the subscription tree.
//!
//! Rules spelled out (MQTT 3.1.1 section 4.7, MQTT 5 section 4.7):
//! - a topic name has no `+` or `#` and is not empty;
//! - in a filter, `+` fills exactly one whole level and `#` is last and whole, matching
//!   the parent level and everything below it (`a/#` matches `a`);
//! - a filter starting with a wildcard does not match topics starting with `$`
//!   (`#` does not see `$SYS/...`) [MQTT-4.7.2-1];
//! - `$share/GROUP/FILTER` is a shared subscription: each message goes to one member.

use std::collections::HashMap;

use bytestring::ByteString;

/// Checks a topic name from a PUBLISH or a will.
pub fn validate_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("a topic name is at least one character long [MQTT-4.7.3-1]".into());
    }
    if topic.contains(['+', '#']) {
        return Err(format!(
            "`{topic}` has a wildcard; topic names may not [MQTT-3.3.2-2]"
        ));
    }
    Ok(())
}

/// A parsed subscription filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// The share group for `$share/GROUP/...`.
    pub share_group: Option<ByteString>,
    /// The filter proper (without the `$share/GROUP/` prefix).
    pub filter: ByteString,
}

/// Parses and checks a filter from SUBSCRIBE or UNSUBSCRIBE.
pub fn parse_filter(raw: &ByteString) -> Result<Filter, String> {
    let (share_group, filter) = match raw.strip_prefix("$share/") {
        Some(rest) => {
            let Some((group, filter)) = rest.split_once('/') else {
                return Err(format!(
                    "`{raw}`: a shared subscription is `$share/GROUP/FILTER` [MQTT-4.8.2-1]"
                ));
            };
            if group.is_empty() || group.contains(['+', '#']) {
                return Err(format!(
                    "`{raw}`: the share name must be non-empty without wildcards [MQTT-4.8.2-2]"
                ));
            }
            (Some(ByteString::from(group)), ByteString::from(filter))
        }
        None => (None, raw.clone()),
    };
    validate_filter(&filter)?;
    Ok(Filter {
        share_group,
        filter,
    })
}

fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("a topic filter is at least one character long [MQTT-4.7.3-1]".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err(format!(
                "`{filter}`: `#` must be a whole level and the last one [MQTT-4.7.1-2]"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "`{filter}`: `+` must fill a whole level [MQTT-4.7.1-3]"
            ));
        }
    }
    Ok(())
}

/// Whether `filter` (already valid, without a share prefix) matches `topic`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            exact => {
                if topic_levels.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

/// A subscription tree from filters to subscribers `S` (keyed by client id).
pub struct Tree<S> {
    root: Node<S>,
    count: usize,
}

struct Node<S> {
    children: HashMap<Box<str>, Node<S>>,
    /// Ordinary subscriptions ending here.
    subscribers: HashMap<ByteString, S>,
    /// Shared subscriptions ending here, by group, members in subscribe order.
    shared: HashMap<ByteString, Vec<(ByteString, S)>>,
}

impl<S> Default for Tree<S> {
    fn default() -> Self {
        Tree {
            root: Node::default(),
            count: 0,
        }
    }
}

impl<S> Default for Node<S> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            subscribers: HashMap::new(),
            shared: HashMap::new(),
        }
    }
}

impl<S> Node<S> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.shared.is_empty()
    }
}

/// One match of a topic: an ordinary subscriber, or a shared group's members.
pub enum Matched<'t, S> {
    /// An ordinary subscription.
    One(&'t ByteString, &'t S),
    /// A shared group (name, members); the caller picks one member.
    Group(&'t ByteString, &'t [(ByteString, S)]),
}

impl<S> Tree<S> {
    /// Adds or replaces `client`'s subscription to `filter`; true when it is new.
    pub fn insert(&mut self, filter: &Filter, client: &ByteString, subscription: S) -> bool {
        let mut node = &mut self.root;
        for level in filter.filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let new = match &filter.share_group {
            None => node
                .subscribers
                .insert(client.clone(), subscription)
                .is_none(),
            Some(group) => {
                let members = node.shared.entry(group.clone()).or_default();
                match members.iter_mut().find(|(c, _)| c == client) {
                    Some(member) => {
                        member.1 = subscription;
                        false
                    }
                    None => {
                        members.push((client.clone(), subscription));
                        true
                    }
                }
            }
        };
        if new {
            self.count += 1;
        }
        new
    }

    /// Removes `client`'s subscription to `filter`; true when there was one.
    pub fn remove(&mut self, filter: &Filter, client: &ByteString) -> bool {
        let levels: Vec<&str> = filter.filter.split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels, filter, client);
        if removed {
            self.count -= 1;
        }
        removed
    }

    fn remove_at(
        node: &mut Node<S>,
        levels: &[&str],
        filter: &Filter,
        client: &ByteString,
    ) -> bool {
        match levels.split_first() {
            None => match &filter.share_group {
                None => node.subscribers.remove(client).is_some(),
                Some(group) => {
                    let Some(members) = node.shared.get_mut(group) else {
                        return false;
                    };
                    let before = members.len();
                    members.retain(|(c, _)| c != client);
                    let removed = members.len() != before;
                    if members.is_empty() {
                        node.shared.remove(group);
                    }
                    removed
                }
            },
            Some((level, rest)) => {
                let Some(child) = node.children.get_mut(*level) else {
                    return false;
                };
                let removed = Self::remove_at(child, rest, filter, client);
                if child.is_empty() {
                    node.children.remove(*level);
                }
                removed
            }
        }
    }

    /// Every subscription matching `topic`.
    pub fn matching<'t>(&'t self, topic: &str, out: &mut Vec<Matched<'t, S>>) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        Self::match_at(&self.root, &levels, dollar, true, out);
    }

    fn match_at<'t>(
        node: &'t Node<S>,
        levels: &[&str],
        dollar: bool,
        first: bool,
        out: &mut Vec<Matched<'t, S>>,
    ) {
        // `#` matches here and below, including the parent level itself; never a `$`
        // topic from the first level.
        if !(first && dollar)
            && let Some(hash) = node.children.get("#")
        {
            Self::collect(hash, out);
        }
        match levels.split_first() {
            None => Self::collect(node, out),
            Some((level, rest)) => {
                if let Some(child) = node.children.get(*level) {
                    Self::match_at(child, rest, dollar, false, out);
                }
                if !(first && dollar)
                    && let Some(plus) = node.children.get("+")
                {
                    Self::match_at(plus, rest, dollar, false, out);
                }
            }
        }
    }

    fn collect<'t>(node: &'t Node<S>, out: &mut Vec<Matched<'t, S>>) {
        out.extend(node.subscribers.iter().map(|(c, s)| Matched::One(c, s)));
        out.extend(
            node.shared
                .iter()
                .map(|(g, members)| Matched::Group(g, members.as_slice())),
        );
    }

    /// How many subscriptions the tree holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_4_7_wildcard_matching() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+/+", "/a", true),
            ("+", "/a", false),
            ("a/+/c", "a//c", true),
            ("#", "$SYS/broker/uptime", false),
            ("+/broker/uptime", "$SYS/broker/uptime", false),
            ("$SYS/#", "$SYS/broker/uptime", true),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(matches(filter, topic), expected, "{filter} vs {topic}");
            let mut tree = Tree::default();
            tree.insert(&parse_filter(&filter.into()).unwrap(), &"c".into(), ());
            let mut out = Vec::new();
            tree.matching(topic, &mut out);
            assert_eq!(!out.is_empty(), expected, "tree: {filter} vs {topic}");
        }
    }

    #[test]
    fn mqtt_4_7_1_invalid_filters() {
        for bad in [
            "a/#/b",
            "a#",
            "a/b+",
            "",
            "$share/g",
            "$share//a",
            "$share/g+/a",
        ] {
            assert!(parse_filter(&bad.into()).is_err(), "{bad}");
        }
        let shared = parse_filter(&"$share/g/a/+".into()).unwrap();
        assert_eq!(shared.share_group.as_deref(), Some("g"));
        assert_eq!(&*shared.filter, "a/+");
        assert!(validate_name("a/+").is_err());
        assert!(validate_name("").is_err());
    }

    #[test]
    fn insert_remove_and_shared_groups() {
        let mut tree: Tree<u8> = Tree::default();
        let f = parse_filter(&"a/+".into()).unwrap();
        let g = parse_filter(&"$share/grp/a/+".into()).unwrap();
        assert!(tree.insert(&f, &"x".into(), 1));
        assert!(!tree.insert(&f, &"x".into(), 2));
        assert!(tree.insert(&g, &"y".into(), 1));
        assert!(tree.insert(&g, &"z".into(), 1));
        assert_eq!(tree.len(), 3);
        let mut out = Vec::new();
        tree.matching("a/b", &mut out);
        assert_eq!(out.len(), 2);
        assert!(
            out.iter()
                .any(|m| matches!(m, Matched::Group(_, members) if members.len() == 2))
        );
        drop(out);
        assert!(tree.remove(&g, &"y".into()));
        assert!(tree.remove(&g, &"z".into()));
        assert!(tree.remove(&f, &"x".into()));
        assert!(!tree.remove(&f, &"x".into()));
        assert!(tree.is_empty());
        assert!(tree.root.is_empty());
    }
}
