//! The rules a listener applies: who may connect (anonymous clients, password file)
//! and what they may read and write (ACL file). One realm for the whole broker, or one
//! per listener with `per_listener_settings`, as in Mosquitto.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::AuthFileError;
use super::acl::{Access, Acl};
use super::password::PasswordFile;
use crate::broker::config::{BrokerConfig, ListenerConfig};
use crate::broker::session::{Identity, Session};

/// What one realm is configured with.
#[derive(Clone, Debug, PartialEq)]
pub struct RealmConfig {
    /// Whether clients without a username may connect.
    pub allow_anonymous: bool,
    /// The password file, if any.
    pub password_file: Option<PathBuf>,
    /// The ACL file, if any.
    pub acl_file: Option<PathBuf>,
}

impl RealmConfig {
    /// The realm of listener `index` (of all listeners without
    /// `per_listener_settings`).
    pub fn of(config: &BrokerConfig, listener: &ListenerConfig) -> RealmConfig {
        let (allow_anonymous, password_file, acl_file) = if config.per_listener_settings {
            (
                listener.allow_anonymous,
                listener.password_file.clone(),
                listener.acl_file.clone(),
            )
        } else {
            (
                config.allow_anonymous,
                config.password_file.clone(),
                config.acl_file.clone(),
            )
        };
        RealmConfig {
            // Unset: anonymous clients are welcome until a password file is given
            // (a listener beyond loopback without either is refused by `check`).
            allow_anonymous: allow_anonymous.unwrap_or(password_file.is_none()),
            password_file,
            acl_file,
        }
    }
}

/// The loaded rules of one realm.
#[derive(Debug)]
pub struct Realm {
    /// Its settings.
    pub config: RealmConfig,
    passwords: Option<PasswordFile>,
    acl: Option<Acl>,
    /// Modification times of the files when read, to notice changes.
    stamps: Vec<Option<SystemTime>>,
}

/// Why a client may not connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No username, and anonymous clients are not allowed: v5 0x87, v3 5.
    NotAuthorized,
    /// Unknown username or wrong password: v5 0x86, v3 4.
    BadCredentials,
}

impl Realm {
    /// Reads the realm's files.
    pub fn load(config: RealmConfig) -> Result<Realm, AuthFileError> {
        let stamps = stamps(&config);
        let passwords = config
            .password_file
            .as_deref()
            .map(PasswordFile::load)
            .transpose()?;
        let acl = config.acl_file.as_deref().map(Acl::load).transpose()?;
        Ok(Realm {
            config,
            passwords,
            acl,
            stamps,
        })
    }

    /// Whether a file changed since it was read.
    pub fn changed_on_disk(&self) -> bool {
        stamps(&self.config) != self.stamps
    }

    /// Checks a CONNECT's credentials (slow with a password file: call it off the
    /// runtime's workers).
    pub fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<(), Refusal> {
        let Some(username) = username else {
            return if self.config.allow_anonymous {
                Ok(())
            } else {
                Err(Refusal::NotAuthorized)
            };
        };
        match &self.passwords {
            Some(file) => match password {
                Some(password) if file.verify(username, password) => Ok(()),
                _ => Err(Refusal::BadCredentials),
            },
            // Without a password file a username is a name, not a credential, as in
            // Mosquitto; whether such clients may connect is `allow_anonymous`.
            None if self.config.allow_anonymous => Ok(()),
            None => Err(Refusal::NotAuthorized),
        }
    }

    /// Whether `client_id` (`username`) may do `access` on `topic`; everything is
    /// allowed without an ACL file.
    pub fn allows(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
        access: Access,
    ) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|acl| acl.allows(client_id, username, topic, access))
    }

    /// Whether CONNECT credentials are hashed and compared (a password file is set).
    pub fn checks_passwords(&self) -> bool {
        self.passwords.is_some()
    }

    /// Whether `username` logs in with the same password here as in `old` (or no
    /// password file checks it in either).
    pub fn same_credentials(&self, old: &Realm, username: &str) -> bool {
        let hash = |realm: &Realm| realm.passwords.as_ref().map(|p| p.hash(username).cloned());
        hash(self) == hash(old)
    }
}

fn stamps(config: &RealmConfig) -> Vec<Option<SystemTime>> {
    [config.password_file.as_deref(), config.acl_file.as_deref()]
        .into_iter()
        .map(|path| path.and_then(modified))
        .collect()
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Every listener's realm, by listener index.
#[derive(Clone, Debug, Default)]
pub struct Realms {
    by_listener: Vec<Arc<Realm>>,
}

impl Realms {
    /// Loads the realm of every listener (shared ones once).
    pub fn load(config: &BrokerConfig) -> Result<Realms, AuthFileError> {
        let mut by_listener: Vec<Arc<Realm>> = Vec::new();
        for listener in &config.listeners {
            let wanted = RealmConfig::of(config, listener);
            let realm = match by_listener.iter().find(|r| r.config == wanted) {
                Some(same) => same.clone(),
                None => Arc::new(Realm::load(wanted)?),
            };
            by_listener.push(realm);
        }
        Ok(Realms { by_listener })
    }

    /// Whether `session`'s client `client_id` may do `access` on `topic`: in-process clients may
    /// do anything; a network client's realm decides.
    pub fn may(&self, client_id: &str, session: &Session, topic: &str, access: Access) -> bool {
        match &session.identity {
            None => true,
            Some(identity) => self.identity_may(client_id, identity, topic, access),
        }
    }

    /// Whether `client_id` logged in as `identity` may do `access` on `topic`.
    pub fn identity_may(
        &self,
        client_id: &str,
        identity: &Identity,
        topic: &str,
        access: Access,
    ) -> bool {
        if !super::reserved_topic_allows(topic, access) {
            return false;
        }
        // A realm that is gone (a listener removed from the settings) allows nothing.
        self.get(usize::from(identity.realm)).is_some_and(|realm| {
            realm.allows(client_id, identity.username.as_deref(), topic, access)
        })
    }

    /// Whether a file of any realm changed since it was read.
    pub fn changed_on_disk(&self) -> bool {
        self.by_listener.iter().any(|realm| realm.changed_on_disk())
    }

    /// The realm of listener `index`.
    pub fn get(&self, index: usize) -> Option<&Arc<Realm>> {
        self.by_listener.get(index)
    }

    /// Rereads every realm whose files changed (or all, with `force`); a realm whose
    /// files no longer load keeps its old rules, and the error is returned.
    pub fn reload(&self, force: bool) -> (Realms, Vec<AuthFileError>) {
        let mut errors = Vec::new();
        let mut by_listener: Vec<Arc<Realm>> = Vec::new();
        for old in &self.by_listener {
            if let Some(done) = by_listener.iter().find(|r| r.config == old.config).cloned() {
                by_listener.push(done);
                continue;
            }
            let realm = if force || old.changed_on_disk() {
                match Realm::load(old.config.clone()) {
                    Ok(new) => Arc::new(new),
                    Err(e) => {
                        errors.push(e);
                        old.clone()
                    }
                }
            } else {
                old.clone()
            };
            by_listener.push(realm);
        }
        (Realms { by_listener }, errors)
    }
}
