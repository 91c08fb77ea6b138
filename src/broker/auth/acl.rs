//! Mosquitto's ACL file (`acl_file`): which topics each client may read and write.
//!
//! The meaning is Mosquitto 2.0's (`src/security_default.c`, `src/security.c`), checked
//! against Debian's `mosquitto` 2.0.11 by `tests/passwd.rs`:
//! - `topic [read|write|readwrite|deny] TOPIC` before any `user` line applies to
//!   clients without a username, after `user NAME` to that user (sections with the same
//!   name add up); with no access word the line grants `readwrite`; the topic is the
//!   rest of the line and may hold wildcards and spaces.
//! - `pattern [read|write|readwrite|deny] TOPIC` applies to every client, with `%c`
//!   replaced by its client id and `%u` by its username; a pattern holding `%u` is
//!   skipped for a client without a username.
//! - A decision takes the client's own section first (its `topic` lines): a matching
//!   `deny` refuses, else a matching grant of the right kind allows. Only when neither
//!   matched are the patterns read the same way. Nothing matching refuses.
//! - When the file has patterns, a client whose username or client id holds `+` or
//!   `#` is refused everything its own section did not decide: substituted into a
//!   pattern, it would act as a wildcard.
//! - A topic starting with `$` matches only rules starting with `$`: `#` does not
//!   give `$SYS/...`; `topic read $SYS/#` does.
//! - SUBSCRIBE is not checked against the file at all: every filter is granted, and
//!   each message is then checked for `read` on its own topic as it is delivered
//!   (retained messages too). Mosquitto 2.0 does the same (its check for a
//!   subscription returns "allowed" with a `FIXME - implement ACL subscription
//!   strings`), so a client subscribing to `#` gets a SUBACK and then only what it
//!   may read.

use std::collections::HashMap;
use std::path::Path;

use super::{AuthFileError, numbered_lines, read_file, reserved_topic_allows};

/// What a client wants to do with a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Receive a message published on the topic (checked on every delivery, retained
    /// messages included).
    Read,
    /// Publish on the topic (checked on PUBLISH and for a will at CONNECT).
    Write,
    /// Subscribe with the topic as filter (checked on SUBSCRIBE; the file never
    /// refuses it, see the module documentation).
    Subscribe,
}

/// Access bits of a rule; a rule with none is a `deny`.
const READ: u8 = 1;
const WRITE: u8 = 2;

/// One part of a level of a rule's topic.
#[derive(Debug)]
enum Piece {
    /// Text as written.
    Literal(Box<str>),
    /// `%c` in a pattern.
    ClientId,
    /// `%u` in a pattern.
    Username,
}

/// One `/`-separated level of a rule's topic.
#[derive(Debug)]
enum Level {
    /// `+`: any one level.
    Plus,
    /// `#`: this level and all below, or none (`a/#` matches `a`).
    Hash,
    /// Text, with substitutions in patterns; it may stand for several topic levels
    /// when a client id holds `/` (Mosquitto allows that).
    Text(Box<[Piece]>),
}

/// One `topic` or `pattern` line, split into levels when the file is read so that a
/// check neither allocates nor re-parses.
#[derive(Debug)]
struct Rule {
    levels: Box<[Level]>,
    /// `READ | WRITE` bits granted; 0 for `deny`.
    access: u8,
    /// Holds `%u`: skipped for clients without a username.
    uses_username: bool,
}

impl Rule {
    fn new(topic: &str, access: u8, substitute: bool) -> Rule {
        let mut uses_username = false;
        let levels = topic
            .split('/')
            .map(|level| match level {
                "+" => Level::Plus,
                "#" => Level::Hash,
                text if substitute => {
                    let pieces = pieces(text);
                    uses_username |= pieces.iter().any(|p| matches!(p, Piece::Username));
                    Level::Text(pieces.into())
                }
                text => Level::Text(Box::new([Piece::Literal(text.into())])),
            })
            .collect();
        Rule {
            levels,
            access,
            uses_username,
        }
    }

    /// The rule's topic with `%c`/`%u` filled in.
    fn render(&self, client_id: &str, username: &str) -> String {
        let mut out = String::new();
        for (index, level) in self.levels.iter().enumerate() {
            if index > 0 {
                out.push('/');
            }
            match level {
                Level::Plus => out.push('+'),
                Level::Hash => out.push('#'),
                Level::Text(pieces) => {
                    for piece in pieces.iter() {
                        out.push_str(match piece {
                            Piece::Literal(text) => text,
                            Piece::ClientId => client_id,
                            Piece::Username => username,
                        });
                    }
                }
            }
        }
        out
    }

    /// Whether the rule's topic, with `%c`/`%u` filled in, matches `topic` as a
    /// subscription filter would, with Mosquitto's `$` rule.
    fn matches(&self, topic: &str, client_id: &str, username: &str) -> bool {
        fn expanded<'a>(piece: &'a Piece, client_id: &'a str, username: &'a str) -> &'a str {
            match piece {
                Piece::Literal(text) => text,
                Piece::ClientId => client_id,
                Piece::Username => username,
            }
        }
        let expand = |piece| expanded(piece, client_id, username);
        if topic.starts_with('$') {
            // The rule must start with `$` too (Mosquitto's check before matching).
            let starts_with_dollar = match self.levels.first() {
                Some(Level::Text(pieces)) => pieces
                    .iter()
                    .map(expand)
                    .find(|text| !text.is_empty())
                    .is_some_and(|text| text.starts_with('$')),
                _ => false,
            };
            if !starts_with_dollar {
                return false;
            }
        }
        let mut rest = topic;
        for (index, level) in self.levels.iter().enumerate() {
            if index > 0 {
                match rest.strip_prefix('/') {
                    Some(after) => rest = after,
                    // The topic ended one level short: only `#` matches that.
                    None => return rest.is_empty() && matches!(level, Level::Hash),
                }
            }
            match level {
                Level::Hash => return true,
                Level::Plus => rest = &rest[rest.find('/').unwrap_or(rest.len())..],
                Level::Text(pieces) => {
                    for piece in pieces.iter() {
                        match rest.strip_prefix(expand(piece)) {
                            Some(after) => rest = after,
                            None => return false,
                        }
                    }
                }
            }
        }
        rest.is_empty()
    }
}

/// Splits a pattern level into text, `%c` and `%u` (any other `%` is text).
fn pieces(text: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut literal_start = 0;
    let mut index = 0;
    let bytes = text.as_bytes();
    while index < bytes.len() {
        let substitution = match (bytes[index], bytes.get(index + 1)) {
            (b'%', Some(b'c')) => Some(Piece::ClientId),
            (b'%', Some(b'u')) => Some(Piece::Username),
            _ => None,
        };
        match substitution {
            Some(piece) => {
                if literal_start < index {
                    pieces.push(Piece::Literal(text[literal_start..index].into()));
                }
                pieces.push(piece);
                index += 2;
                literal_start = index;
            }
            None => index += 1,
        }
    }
    if literal_start < text.len() || pieces.is_empty() {
        pieces.push(Piece::Literal(text[literal_start..].into()));
    }
    pieces
}

/// The rules of one section (anonymous, one user, or the patterns), denials apart
/// because any matching denial wins over every grant of the section.
#[derive(Debug, Default)]
struct Rules {
    deny: Vec<Rule>,
    grant: Vec<Rule>,
}

impl Rules {
    fn push(&mut self, rule: Rule) {
        if rule.access == 0 {
            self.deny.push(rule);
        } else {
            self.grant.push(rule);
        }
    }

    fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.grant.is_empty()
    }

    /// Whether a grant with `READ` could let some topic of `filter` through.
    fn reads_into(&self, filter: &str, client_id: &str, username: Option<&str>) -> bool {
        let user = username.unwrap_or_default();
        self.grant
            .iter()
            .filter(|rule| !(rule.uses_username && username.is_none()))
            .any(|rule| {
                rule.access & READ != 0 && filters_overlap(&rule.render(client_id, user), filter)
            })
    }

    /// `Some(false)` if a denial matches, else `Some(true)` if a grant with `bit`
    /// matches, else `None`: this section does not decide.
    fn decide(
        &self,
        topic: &str,
        client_id: &str,
        username: Option<&str>,
        bit: u8,
    ) -> Option<bool> {
        let applies = |rule: &&Rule| !(rule.uses_username && username.is_none());
        let user = username.unwrap_or_default();
        if self
            .deny
            .iter()
            .filter(applies)
            .any(|rule| rule.matches(topic, client_id, user))
        {
            return Some(false);
        }
        if self
            .grant
            .iter()
            .filter(applies)
            .any(|rule| rule.access & bit != 0 && rule.matches(topic, client_id, user))
        {
            return Some(true);
        }
        None
    }
}

/// A parsed ACL file.
#[derive(Debug, Default)]
pub struct Acl {
    /// `topic` lines before the first `user` line: clients without a username.
    anonymous: Rules,
    /// `topic` lines under `user NAME`.
    users: HashMap<String, Rules>,
    /// `pattern` lines, wherever they are written.
    patterns: Rules,
}

impl Acl {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Acl, AuthFileError> {
        let text = read_file(path)?;
        Self::parse(&text, path)
    }

    /// Parses an ACL file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Acl, AuthFileError> {
        let error = |line, message| AuthFileError::Line {
            path: path.to_path_buf(),
            line,
            message,
        };
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (number, line) in numbered_lines(text) {
            let line = line.trim_matches(|c: char| c.is_ascii_whitespace());
            // Mosquitto only skips `#` in the first column; an indented comment is an
            // error there and a comment here.
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(line);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(error(number, "`user` needs a username: `user NAME`".into()));
                    }
                    user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let (first, after) = split_word(rest);
                    // As in Mosquitto, a single word is the topic, granted readwrite.
                    let (access, topic) = if after.is_empty() {
                        ("readwrite", first)
                    } else {
                        (first, after)
                    };
                    if topic.is_empty() {
                        return Err(error(
                            number,
                            format!(
                                "`{keyword}` needs a topic: `{keyword} [read|write|readwrite|deny] TOPIC`"
                            ),
                        ));
                    }
                    let access = match access {
                        "read" => READ,
                        "write" => WRITE,
                        "readwrite" => READ | WRITE,
                        "deny" => 0,
                        other => {
                            return Err(error(
                                number,
                                format!(
                                    "unknown access `{other}`; write `read`, `write`, \
                                     `readwrite` or `deny`"
                                ),
                            ));
                        }
                    };
                    check_topic(topic).map_err(|m| error(number, m))?;
                    if keyword == "pattern" {
                        if !topic.contains("%c") && !topic.contains("%u") {
                            tracing::warn!(
                                "{}:{number}: pattern `{topic}` has neither %c nor %u, so it \
                                 applies to every client alike",
                                path.display()
                            );
                        }
                        acl.patterns.push(Rule::new(topic, access, true));
                    } else {
                        let section = match &user {
                            Some(name) => acl.users.entry(name.clone()).or_default(),
                            None => &mut acl.anonymous,
                        };
                        section.push(Rule::new(topic, access, false));
                    }
                }
                other => {
                    return Err(error(
                        number,
                        format!(
                            "unknown keyword `{other}`; an ACL line is `user NAME`, \
                             `topic [read|write|readwrite|deny] TOPIC` or \
                             `pattern [read|write|readwrite|deny] TOPIC`"
                        ),
                    ));
                }
            }
        }
        Ok(acl)
    }

    /// Whether the client `client_id` (logged in as `username`, or anonymous) may
    /// `access` `topic`. See the module documentation for the rules; in short: the
    /// client's own `topic` lines decide first (deny before grants), then the
    /// patterns (deny before grants), and nothing matching refuses.
    ///
    /// `Subscribe`: a filter is refused when no rule of the client could grant `read`
    /// on any topic it matches (a subscription that can never deliver anything), and
    /// where [`reserved_topic_allows`] refuses. Mosquitto 2.0 grants every filter and
    /// only filters deliveries; Headwater tells the client at SUBACK, as the issue asks,
    /// and filters deliveries as well (a `#` subscriber is granted and receives only
    /// what it may read).
    ///
    /// Runs on every delivery: no allocation, the client's section is one hash lookup.
    pub fn allows(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
        access: Access,
    ) -> bool {
        if !reserved_topic_allows(topic, access) {
            return false;
        }
        let bit = match access {
            Access::Read => READ,
            Access::Write => WRITE,
            Access::Subscribe => return self.may_subscribe(client_id, username, topic),
        };
        let own = match username {
            Some(name) => self.users.get(name),
            None => Some(&self.anonymous),
        };
        if let Some(decision) = own.and_then(|rules| rules.decide(topic, client_id, username, bit))
        {
            return decision;
        }
        if self.patterns.is_empty() {
            return false;
        }
        // A `+` or `#` substituted into a pattern would widen it.
        let dangerous = |s: &str| s.contains(['+', '#']);
        if dangerous(client_id) || username.is_some_and(dangerous) {
            return false;
        }
        self.patterns
            .decide(topic, client_id, username, bit)
            .unwrap_or(false)
    }
}

impl Acl {
    fn may_subscribe(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool {
        let own = match username {
            Some(name) => self.users.get(name),
            None => Some(&self.anonymous),
        };
        if own.is_some_and(|rules| rules.reads_into(filter, client_id, username)) {
            return true;
        }
        let dangerous = |s: &str| s.contains(['+', '#']);
        !(dangerous(client_id) || username.is_some_and(dangerous))
            && self.patterns.reads_into(filter, client_id, username)
    }
}

/// Whether some topic matches both filters, with the `$` rule: a wildcard first level
/// never matches a topic starting with `$`.
fn filters_overlap(a: &str, b: &str) -> bool {
    let first_is_wild = |f: &str| f.starts_with('+') || f.starts_with('#');
    if (a.starts_with('$') && first_is_wild(b)) || (b.starts_with('$') && first_is_wild(a)) {
        return false;
    }
    let mut left = a.split('/');
    let mut right = b.split('/');
    loop {
        match (left.next(), right.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some(x), Some(y)) => {
                if x != "+" && y != "+" && x != y {
                    return false;
                }
            }
            (None, None) => return true,
            // One ended and the other goes on without `#` (matched above).
            (None, Some(_)) | (Some(_), None) => return false,
        }
    }
}

/// The first word (up to a space or tab) and the rest, trimmed.
fn split_word(text: &str) -> (&str, &str) {
    match text.split_once([' ', '\t']) {
        Some((word, rest)) => (word, rest.trim_matches([' ', '\t'])),
        None => (text, ""),
    }
}

/// A rule's topic must be a valid subscription filter, as Mosquitto requires.
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.len() > usize::from(u16::MAX) {
        return Err("the topic is longer than MQTT allows (65535 bytes)".into());
    }
    let levels = topic.split('/').count();
    for (index, level) in topic.split('/').enumerate() {
        if level.contains('#') && (level != "#" || index + 1 != levels) {
            return Err(format!(
                "`{topic}` is not a valid topic filter: `#` must be a whole level and \
                 the last one (`a/#`)"
            ));
        }
        if level.contains('+') && level != "+" {
            return Err(format!(
                "`{topic}` is not a valid topic filter: `+` must fill a whole level (`a/+/b`)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::topic;

    fn parse(text: &str) -> Acl {
        Acl::parse(text, Path::new("acl")).unwrap_or_else(|e| panic!("{e}"))
    }

    /// One decision: `(client id, username, topic, access, expected)`.
    type Case<'a> = (&'a str, Option<&'a str>, &'a str, Access, bool);

    fn check(acl_text: &str, cases: &[Case<'_>]) {
        let acl = parse(acl_text);
        for &(client, user, topic, access, expected) in cases {
            assert_eq!(
                acl.allows(client, user, topic, access),
                expected,
                "client {client:?} user {user:?} {access:?} {topic:?} in\n{acl_text}"
            );
        }
    }

    use Access::{Read, Subscribe, Write};

    #[test]
    fn anonymous_section_and_user_sections() {
        let acl = "\
# before any user: anonymous clients
topic read public/#
topic weather

user alice
topic readwrite alice/#
topic write   shared/in

user bob
topic read shared/#
";
        check(
            acl,
            &[
                ("c", None, "public/a", Read, true),
                ("c", None, "public/a", Write, false),
                ("c", None, "weather", Write, true),
                ("c", None, "weather", Read, true),
                ("c", None, "alice/x", Read, false),
                ("c", Some("alice"), "alice/x", Read, true),
                ("c", Some("alice"), "alice", Write, true),
                ("c", Some("alice"), "public/a", Read, false),
                ("c", Some("alice"), "shared/in", Write, true),
                ("c", Some("alice"), "shared/in", Read, false),
                ("c", Some("bob"), "shared/in", Read, true),
                ("c", Some("bob"), "shared/in", Write, false),
                // A username without a section and no patterns: nothing.
                ("c", Some("carol"), "public/a", Read, false),
                // An empty username is a username, not anonymous.
                ("c", Some(""), "public/a", Read, false),
            ],
        );
    }

    #[test]
    fn sections_with_the_same_name_add_up() {
        check(
            "user a\ntopic read x\nuser b\ntopic read y\nuser a\ntopic read z\n",
            &[
                ("c", Some("a"), "x", Read, true),
                ("c", Some("a"), "z", Read, true),
                ("c", Some("a"), "y", Read, false),
            ],
        );
    }

    #[test]
    fn deny_wins_within_a_section_wherever_it_is_written() {
        let acl = "\
user alice
topic read #
topic readwrite home/#
topic deny home/secret/#
pattern deny %c/private
pattern readwrite %c/#
";
        check(
            acl,
            &[
                ("c", Some("alice"), "home/a", Write, true),
                ("c", Some("alice"), "home/secret", Read, false),
                ("c", Some("alice"), "home/secret/x", Write, false),
                // The user's own deny decides too: the pattern `%c/#` would grant it.
                ("home", Some("alice"), "home/secret/x", Write, false),
                ("home", Some("alice"), "home/secret/x", Read, false),
                ("c", Some("alice"), "other", Read, true),
                ("c", Some("alice"), "other", Write, false),
                // The user's own grant decides before the patterns are read: a
                // pattern's deny does not take back `topic read #` (as in Mosquitto).
                ("c", Some("alice"), "c/private", Read, true),
                ("c", Some("alice"), "c/private", Write, false),
                ("c", Some("alice"), "c/other", Write, true),
                ("c", Some("bob"), "c/private", Write, false),
                ("c", Some("bob"), "c/x", Write, true),
            ],
        );
    }

    #[test]
    fn patterns_substitute_client_id_and_username() {
        let acl = "\
pattern readwrite devices/%c/#
pattern read users/%u/inbox
pattern write log/%u-%c
pattern read lit/%x/%%c
";
        check(
            acl,
            &[
                ("dev1", None, "devices/dev1/temp", Write, true),
                ("dev1", None, "devices/dev1", Read, true),
                ("dev1", None, "devices/dev2/temp", Read, false),
                ("dev1", Some("bob"), "users/bob/inbox", Read, true),
                ("dev1", Some("bob"), "users/alice/inbox", Read, false),
                ("dev1", Some("bob"), "log/bob-dev1", Write, true),
                ("dev1", Some("bob"), "log/bob-dev2", Write, false),
                // `%u` patterns are skipped without a username, never matched as "".
                ("dev1", None, "users//inbox", Read, false),
                ("dev1", None, "log/-dev1", Write, false),
                // Only %c and %u are substituted.
                ("d", None, "lit/%x/%d", Read, true),
                // A client id with `/` spans levels, as in Mosquitto 2.0.
                ("a/b", None, "devices/a/b/t", Write, true),
                ("a/b", None, "devices/a/t", Write, false),
                // An empty client id or username is substituted as empty.
                ("", Some(""), "users//inbox", Read, true),
            ],
        );
    }

    #[test]
    fn wildcard_characters_in_ids_are_refused_by_patterns_only() {
        let acl = "\
user alice
topic read alice/#
pattern read devices/%c/#
pattern read users/%u/#
";
        check(
            acl,
            &[
                ("x+", Some("bob"), "devices/x+/t", Read, false),
                ("#", Some("bob"), "devices/anything", Read, false),
                ("c", Some("bo#"), "users/bo#", Read, false),
                ("c", Some("b+"), "users/bob/x", Read, false),
                ("c", Some("bob"), "users/bob/x", Read, true),
                // The user's own section is read before the check.
                ("x+", Some("alice"), "alice/t", Read, true),
                ("x+", Some("alice"), "devices/x/t", Read, false),
            ],
        );
        // Without patterns the characters are harmless and not refused.
        check("topic read a\n", &[("x+", None, "a", Read, true)]);
    }

    #[test]
    fn dollar_topics_need_dollar_rules() {
        let acl = "\
topic read #
topic read +/broker/#
user admin
topic read $SYS/#
topic readwrite $SYS/broker/connection/+/state
topic readwrite $other/#
topic readwrite #
pattern read $%c/#
";
        check(
            acl,
            &[
                ("c", None, "$SYS/broker/uptime", Read, false),
                ("c", None, "a/broker/uptime", Read, true),
                ("c", Some("admin"), "$SYS/broker/uptime", Read, true),
                // Nobody publishes to $SYS, whatever the file grants.
                (
                    "c",
                    Some("admin"),
                    "$SYS/broker/connection/b/state",
                    Write,
                    false,
                ),
                ("c", Some("admin"), "$other/x", Write, true),
                ("c", Some("admin"), "$share/g/x", Write, false),
                ("SYS", Some("bob"), "$SYS/x", Read, true),
                ("c", Some("bob"), "$SYS/x", Read, false),
            ],
        );
    }

    #[test]
    fn a_filter_is_refused_only_when_nothing_it_matches_is_readable() {
        let acl = "topic deny secret/#\ntopic read public/#\nuser alice\ntopic read a\ntopic readwrite $SYS/broker/#\npattern read devices/%c/#\n";
        check(
            acl,
            &[
                // Anonymous: `public/#` is readable, so `#` is granted (deliveries are
                // filtered); `secret/#` overlaps no grant.
                ("c", None, "#", Subscribe, true),
                ("c", None, "public/+", Subscribe, true),
                ("c", None, "secret/#", Subscribe, false),
                ("c", None, "secret/x", Read, false),
                // alice: `a` and `$SYS/broker/#`, and her devices through the pattern.
                ("c", Some("alice"), "a", Subscribe, true),
                ("c", Some("alice"), "+", Subscribe, true),
                ("c", Some("alice"), "b/+", Subscribe, false),
                ("c", Some("alice"), "$SYS/#", Subscribe, true),
                ("c", Some("alice"), "$SYS/other", Subscribe, false),
                ("c", Some("alice"), "devices/c/temp", Subscribe, true),
                ("c", Some("alice"), "devices/other/temp", Subscribe, false),
                // A `#` grant never reaches `$` topics.
                ("c", None, "$SYS/#", Subscribe, false),
            ],
        );
        // An empty file refuses every read, so every subscription too.
        check(
            "",
            &[
                ("c", None, "a", Subscribe, false),
                ("c", None, "a", Read, false),
                ("c", Some("u"), "a", Write, false),
            ],
        );
    }

    #[test]
    fn overlapping_filters() {
        for (a, b, expected) in [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/#", "a", true),
            ("#", "a/b/c", true),
            ("a/+", "a/b/c", false),
            ("a/b", "a/c", false),
            ("+/b", "a/+", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/broker/uptime", true),
        ] {
            assert_eq!(super::filters_overlap(a, b), expected, "{a} ~ {b}");
            assert_eq!(super::filters_overlap(b, a), expected, "{b} ~ {a}");
        }
    }

    #[test]
    fn access_words_and_defaults() {
        check(
            "topic a\ntopic read b\ntopic write c\ntopic readwrite d\ntopic deny e\ntopic read\n",
            &[
                ("c", None, "a", Read, true),
                ("c", None, "a", Write, true),
                ("c", None, "b", Write, false),
                ("c", None, "c", Read, false),
                ("c", None, "c", Write, true),
                ("c", None, "d", Write, true),
                ("c", None, "e", Read, false),
                // `topic read` alone grants readwrite on the topic `read`, as Mosquitto.
                ("c", None, "read", Write, true),
            ],
        );
    }

    #[test]
    fn layout_is_forgiving_where_it_cannot_change_meaning() {
        check(
            "  # indented comment\r\n\n\ttopic\tread  a b  \r\nuser  al ice \ntopic x\n",
            &[
                ("c", None, "a b", Read, true),
                ("c", Some("al ice"), "x", Write, true),
            ],
        );
    }

    #[test]
    fn bad_lines_name_file_line_and_fix() {
        let cases = [
            (
                "topic read a\nuser\n",
                "acl:2: `user` needs a username: `user NAME`",
            ),
            (
                "topic\n",
                "acl:1: `topic` needs a topic: `topic [read|write|readwrite|deny] TOPIC`",
            ),
            (
                "\npattern  \n",
                "acl:2: `pattern` needs a topic: `pattern [read|write|readwrite|deny] TOPIC`",
            ),
            (
                "topic bogus a\n",
                "acl:1: unknown access `bogus`; write `read`, `write`, `readwrite` or `deny`",
            ),
            (
                "# c\ntopics read a\n",
                "acl:2: unknown keyword `topics`; an ACL line is `user NAME`, \
                 `topic [read|write|readwrite|deny] TOPIC` or \
                 `pattern [read|write|readwrite|deny] TOPIC`",
            ),
            (
                "topic read a#\n",
                "acl:1: `a#` is not a valid topic filter: `#` must be a whole level and the \
                 last one (`a/#`)",
            ),
            (
                "topic read #/a\n",
                "acl:1: `#/a` is not a valid topic filter: `#` must be a whole level and the \
                 last one (`a/#`)",
            ),
            (
                "pattern read a/%c+\n",
                "acl:1: `a/%c+` is not a valid topic filter: `+` must fill a whole level \
                 (`a/+/b`)",
            ),
        ];
        for (text, expected) in cases {
            let error = Acl::parse(text, Path::new("acl")).unwrap_err().to_string();
            assert_eq!(error, expected, "{text}");
        }
    }

    #[test]
    fn plain_rules_match_like_subscription_filters() {
        // The rule matcher must agree with the broker's own filter matching.
        let filters = [
            "#", "+", "a", "a/#", "a/+", "+/b", "a/+/c", "/a", "a/", "+/+", "/#", "a/b/#",
            "$SYS/#", "$SYS/+/x", "a b/c",
        ];
        let topics = [
            "a", "a/b", "a/b/c", "/a", "a/", "/", "b", "a/c", "x/b", "$SYS/x", "$SYS/y/x", "$SYS",
            "a b/c", "ab", "a/bc",
        ];
        for filter in filters {
            let rule = Rule::new(filter, READ, false);
            for topic in topics {
                assert_eq!(
                    rule.matches(topic, "c", "u"),
                    topic::matches(filter, topic),
                    "filter {filter:?} topic {topic:?}"
                );
            }
        }
    }

    #[test]
    fn loads_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acl");
        std::fs::write(&path, "topic read a\n").unwrap();
        assert!(Acl::load(&path).unwrap().allows("c", None, "a", Read));
        let err = Acl::load(&dir.path().join("none")).unwrap_err().to_string();
        assert!(err.contains("none: "), "{err}");
    }
}
