//! Pusher apps: credentials and per-app limits, loaded from `[[apps]]` tables; never does I/O.
//!
//! Field names follow the Soketi/Sockudo config keys so existing app files carry over; every
//! limit has a default documented on its field.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

/// One Pusher application: what a client names with `/app/{key}` and a server signs with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The app id used by the HTTP API (`/apps/{id}/events`).
    pub id: String,
    /// The public key clients connect with (`/app/{key}`) and that prefixes auth strings.
    pub key: String,
    /// The HMAC-SHA256 secret for channel auth, user sign-in and HTTP API signatures.
    pub secret: String,
    /// A disabled app refuses new connections with close code 4003. Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Origins allowed to connect (`Origin` header, exact match); empty or `"*"` allows all.
    /// Hit: the connection is refused with close code 4009. Default: empty.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Connections for this app across the server. Hit: close code 4004. Default: 10,000, a
    /// bound that a forgotten test app cannot turn into a denial of service.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Whether `client-*` events are accepted on private and presence channels. Default: false
    /// (Pusher's default: the feature is opt-in per app).
    #[serde(default)]
    pub enable_client_events: bool,
    /// Whether `pusher:signin` is accepted. Default: true.
    #[serde(default = "default_true")]
    pub enable_user_authentication: bool,
    /// Whether a connection must sign in within [`crate::pusher::session::SIGNIN_TIMEOUT_MS`].
    /// Hit: close code 4009. Default: false.
    #[serde(default)]
    pub require_user_authentication: bool,
    /// Distinct users in one presence channel. Hit: `pusher:subscription_error`. Default: 100
    /// (Pusher's limit).
    #[serde(default = "default_max_presence_members")]
    pub max_presence_members: u32,
    /// Bytes of a presence member's `user_info` (serialized JSON). Hit:
    /// `pusher:subscription_error`. Default: 1,024 (Pusher's limit).
    #[serde(default = "default_max_presence_user_info_bytes")]
    pub max_presence_user_info_bytes: u32,
    /// Bytes of an event's `data` (serialized JSON). Hit: `pusher:error` for a client event,
    /// HTTP 413 for the HTTP API. Default: 10,240 (Pusher's 10 KB).
    #[serde(default = "default_max_event_payload_bytes")]
    pub max_event_payload_bytes: u32,
    /// Bytes of a channel name. Hit: `pusher:subscription_error`. Default: 164 (Pusher's limit).
    #[serde(default = "default_max_channel_name_length")]
    pub max_channel_name_length: u32,
    /// Channels named by one HTTP API event. Hit: HTTP 400. Default: 100 (Pusher's limit).
    #[serde(default = "default_max_event_channels")]
    pub max_event_channels: u32,
    /// Events in one HTTP API batch. Hit: HTTP 400. Default: 10 (Pusher's limit).
    #[serde(default = "default_max_event_batch_size")]
    pub max_event_batch_size: u32,
    /// Client events per second per connection (token bucket, burst of the same size). Hit: the
    /// event is dropped with a `pusher:error` code 4301. Default: 10 (Pusher's limit).
    #[serde(default = "default_client_event_rate_per_s")]
    pub client_event_rate_per_s: u32,
    /// Seconds of client silence before the server sends `pusher:ping`; also announced to the
    /// client in `pusher:connection_established`. Default: 120 (Pusher's value).
    #[serde(default = "default_activity_timeout_s")]
    pub activity_timeout_s: u32,
    /// Channels of this app held at once, counted per shard that has subscribers (so a channel
    /// with subscribers on two shards counts twice). Hit: the subscribe that would create one
    /// more gets `pusher:subscription_error` (`LimitReached`). Default: 100,000, so one client
    /// cannot make the server hold channels without bound.
    #[serde(default = "default_max_channels")]
    pub max_channels: u32,
    /// Where this app's webhooks go (`[[apps.webhooks]]` tables). Default: none, and then no
    /// webhook thread work is done for the app.
    #[serde(default)]
    pub webhooks: Vec<WebhookTarget>,
}

/// The webhook event names a target may subscribe to (Pusher webhooks docs, "Events").
pub const WEBHOOK_EVENT_TYPES: [&str; 6] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
];

/// One webhook receiver of an app: `[[apps.webhooks]] url = "http://..." event_types = [...]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTarget {
    /// The URL each batch is POSTed to. Only `http://` (no TLS client is built in): checked by
    /// [`Apps::new`].
    pub url: String,
    /// The event names ([`WEBHOOK_EVENT_TYPES`]) sent to this URL; empty sends every event.
    /// Default: empty.
    #[serde(default)]
    pub event_types: Vec<String>,
}

impl WebhookTarget {
    /// Whether an event named `name` goes to this target.
    pub fn accepts(&self, name: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == name)
    }
}

impl App {
    /// The development app: `app-id` / `app-key` / `app-secret`, client events on (what
    /// Soketi and Reverb start with, so tutorials work unchanged).
    pub fn default_dev() -> App {
        App {
            id: "app-id".to_owned(),
            key: "app-key".to_owned(),
            secret: "app-secret".to_owned(),
            enabled: true,
            allowed_origins: Vec::new(),
            max_connections: default_max_connections(),
            enable_client_events: true,
            enable_user_authentication: true,
            require_user_authentication: false,
            max_presence_members: default_max_presence_members(),
            max_presence_user_info_bytes: default_max_presence_user_info_bytes(),
            max_event_payload_bytes: default_max_event_payload_bytes(),
            max_channel_name_length: default_max_channel_name_length(),
            max_event_channels: default_max_event_channels(),
            max_event_batch_size: default_max_event_batch_size(),
            client_event_rate_per_s: default_client_event_rate_per_s(),
            activity_timeout_s: default_activity_timeout_s(),
            max_channels: default_max_channels(),
            webhooks: Vec::new(),
        }
    }

    /// Whether a browser at `origin` may connect. A missing `Origin` header (non-browser
    /// clients) is allowed unless the list restricts origins.
    pub fn allows_origin(&self, origin: Option<&str>) -> bool {
        if self.allowed_origins.is_empty() || self.allowed_origins.iter().any(|o| o == "*") {
            return true;
        }
        origin.is_some_and(|origin| self.allowed_origins.iter().any(|o| o == origin))
    }
}

/// All configured apps, looked up by key (WebSocket path) or id (HTTP API path).
#[derive(Debug, Clone, Default)]
pub struct Apps {
    apps: Vec<Arc<App>>,
    by_key: HashMap<String, usize>,
    by_id: HashMap<String, usize>,
}

/// Why a set of apps was refused at startup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppsError {
    #[error("two apps share the key {0:?}")]
    DuplicateKey(String),
    #[error("two apps share the id {0:?}")]
    DuplicateId(String),
    #[error("an app has an empty {0}")]
    EmptyField(&'static str),
    #[error("app {id:?}: {field} must be at least 1")]
    ZeroLimit { id: String, field: &'static str },
    #[error("app {id:?}: webhook url {url:?} must start with http:// (https is not supported)")]
    WebhookUrlNotHttp { id: String, url: String },
    #[error("app {id:?}: unknown webhook event type {name:?} (known: {known})", known = WEBHOOK_EVENT_TYPES.join(", "))]
    UnknownWebhookEventType { id: String, name: String },
}

impl Apps {
    /// Checks that ids and keys are unique and non-empty and that limits are usable.
    pub fn new(apps: Vec<App>) -> Result<Apps, AppsError> {
        let mut out = Apps::default();
        for app in apps {
            for (field, value) in [("id", &app.id), ("key", &app.key), ("secret", &app.secret)] {
                if value.is_empty() {
                    return Err(AppsError::EmptyField(field));
                }
            }
            for (field, value) in [
                ("max_connections", app.max_connections),
                ("max_presence_members", app.max_presence_members),
                ("max_event_payload_bytes", app.max_event_payload_bytes),
                ("max_channel_name_length", app.max_channel_name_length),
                ("max_event_channels", app.max_event_channels),
                ("max_event_batch_size", app.max_event_batch_size),
                ("activity_timeout_s", app.activity_timeout_s),
                ("max_channels", app.max_channels),
            ] {
                if value == 0 {
                    return Err(AppsError::ZeroLimit {
                        id: app.id.clone(),
                        field,
                    });
                }
            }
            check_webhooks(&app)?;
            let index = out.apps.len();
            if out.by_key.insert(app.key.clone(), index).is_some() {
                return Err(AppsError::DuplicateKey(app.key));
            }
            if out.by_id.insert(app.id.clone(), index).is_some() {
                return Err(AppsError::DuplicateId(app.id));
            }
            out.apps.push(Arc::new(app));
        }
        Ok(out)
    }

    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.by_key.get(key).map(|&i| &self.apps[i])
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id).map(|&i| &self.apps[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<App>> {
        self.apps.iter()
    }

    pub fn len(&self) -> usize {
        self.apps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// The app at `index` (the order of the configuration).
    pub fn get(&self, index: usize) -> Option<&Arc<App>> {
        self.apps.get(index)
    }

    /// The index of the app with this key.
    pub fn index_of_key(&self, key: &str) -> Option<u32> {
        self.by_key.get(key).map(|&i| i as u32)
    }

    /// The index of the app with this id.
    pub fn index_of_id(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).map(|&i| i as u32)
    }
}

/// Webhook URLs are plain `http://` with a host, and event types are known names.
fn check_webhooks(app: &App) -> Result<(), AppsError> {
    for target in &app.webhooks {
        let host = target.url.strip_prefix("http://").unwrap_or("");
        if host.is_empty() || host.starts_with('/') {
            return Err(AppsError::WebhookUrlNotHttp {
                id: app.id.clone(),
                url: target.url.clone(),
            });
        }
        if let Some(name) = target
            .event_types
            .iter()
            .find(|name| !WEBHOOK_EVENT_TYPES.contains(&name.as_str()))
        {
            return Err(AppsError::UnknownWebhookEventType {
                id: app.id.clone(),
                name: name.clone(),
            });
        }
    }
    Ok(())
}

fn default_true() -> bool {
    true
}
fn default_max_connections() -> u32 {
    10_000
}
fn default_max_presence_members() -> u32 {
    100
}
fn default_max_presence_user_info_bytes() -> u32 {
    1024
}
fn default_max_event_payload_bytes() -> u32 {
    10_240
}
fn default_max_channel_name_length() -> u32 {
    164
}
fn default_max_event_channels() -> u32 {
    100
}
fn default_max_event_batch_size() -> u32 {
    10
}
fn default_client_event_rate_per_s() -> u32 {
    10
}
fn default_max_channels() -> u32 {
    100_000
}
fn default_activity_timeout_s() -> u32 {
    120
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        apps: Vec<App>,
    }

    #[test]
    fn toml_app_with_only_credentials_takes_every_default() {
        let file: File =
            toml::from_str("[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n").unwrap();
        let app = &file.apps[0];
        assert!(app.enabled);
        assert!(!app.enable_client_events);
        assert!(app.enable_user_authentication);
        assert!(!app.require_user_authentication);
        assert_eq!(app.max_presence_members, 100);
        assert_eq!(app.max_presence_user_info_bytes, 1024);
        assert_eq!(app.max_event_payload_bytes, 10_240);
        assert_eq!(app.max_channel_name_length, 164);
        assert_eq!(app.max_event_channels, 100);
        assert_eq!(app.max_event_batch_size, 10);
        assert_eq!(app.client_event_rate_per_s, 10);
        assert_eq!(app.activity_timeout_s, 120);
        assert!(app.allowed_origins.is_empty());
    }

    #[test]
    fn toml_app_overrides_are_read() {
        let file: File = toml::from_str(
            "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\nenabled = false\n\
             enable_client_events = true\nmax_presence_members = 7\n\
             allowed_origins = [\"https://a.example\"]\n",
        )
        .unwrap();
        let app = &file.apps[0];
        assert!(!app.enabled);
        assert!(app.enable_client_events);
        assert_eq!(app.max_presence_members, 7);
        assert_eq!(app.allowed_origins, vec!["https://a.example".to_owned()]);
    }

    #[test]
    fn toml_app_with_a_misspelled_key_is_refused() {
        let r: Result<File, _> =
            toml::from_str("[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\nmax_presense = 1\n");
        assert!(r.is_err());
    }

    #[test]
    fn toml_app_without_secret_is_refused() {
        let r: Result<File, _> = toml::from_str("[[apps]]\nid = \"1\"\nkey = \"k\"\n");
        assert!(r.is_err());
    }

    #[test]
    fn default_dev_app_has_dev_credentials_and_client_events() {
        let app = App::default_dev();
        assert_eq!(
            (&*app.id, &*app.key, &*app.secret),
            ("app-id", "app-key", "app-secret")
        );
        assert!(app.enable_client_events);
    }

    #[test]
    fn apps_are_found_by_key_and_by_id() {
        let mut other = App::default_dev();
        other.id = "2".into();
        other.key = "key-2".into();
        let apps = Apps::new(vec![App::default_dev(), other]).unwrap();
        assert_eq!(apps.by_key("key-2").unwrap().id, "2");
        assert_eq!(apps.by_id("app-id").unwrap().key, "app-key");
        assert!(apps.by_key("app-id").is_none());
        assert!(apps.by_id("nope").is_none());
        assert_eq!(apps.len(), 2);
    }

    #[test]
    fn apps_refuse_duplicates_empties_and_zero_limits() {
        let dev = App::default_dev;
        let mut same_key = dev();
        same_key.id = "other".into();
        let mut same_id = dev();
        same_id.key = "other".into();
        let mut empty = dev();
        empty.secret.clear();
        let mut zero = dev();
        zero.max_event_payload_bytes = 0;
        let hook = |url: &str, event_types: &[&str]| WebhookTarget {
            url: url.into(),
            event_types: event_types.iter().map(|&t| t.into()).collect(),
        };
        let mut https = dev();
        https.webhooks = vec![hook("https://h.example/hook", &[])];
        let mut no_host = dev();
        no_host.webhooks = vec![hook("http:///hook", &[])];
        let mut unknown_event = dev();
        unknown_event.webhooks = vec![hook("http://h.example/", &["channel_occupied", "joined"])];
        let cases: Vec<(Vec<App>, AppsError)> = vec![
            (
                vec![dev(), same_key],
                AppsError::DuplicateKey("app-key".into()),
            ),
            (
                vec![dev(), same_id],
                AppsError::DuplicateId("app-id".into()),
            ),
            (vec![empty], AppsError::EmptyField("secret")),
            (
                vec![zero],
                AppsError::ZeroLimit {
                    id: "app-id".into(),
                    field: "max_event_payload_bytes",
                },
            ),
            (
                vec![https],
                AppsError::WebhookUrlNotHttp {
                    id: "app-id".into(),
                    url: "https://h.example/hook".into(),
                },
            ),
            (
                vec![no_host],
                AppsError::WebhookUrlNotHttp {
                    id: "app-id".into(),
                    url: "http:///hook".into(),
                },
            ),
            (
                vec![unknown_event],
                AppsError::UnknownWebhookEventType {
                    id: "app-id".into(),
                    name: "joined".into(),
                },
            ),
        ];
        for (apps, want) in cases {
            assert_eq!(Apps::new(apps).unwrap_err(), want);
        }
    }

    #[test]
    fn toml_app_webhooks_are_read_and_filter_by_event_type() {
        let file: File = toml::from_str(
            "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n\
             [[apps.webhooks]]\nurl = \"http://127.0.0.1:9000/hook\"\n\
             event_types = [\"channel_occupied\"]\n\
             [[apps.webhooks]]\nurl = \"http://127.0.0.1:9001/all\"\n",
        )
        .unwrap();
        let hooks = &file.apps[0].webhooks;
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0].url, "http://127.0.0.1:9000/hook");
        assert!(hooks[0].accepts("channel_occupied"));
        assert!(!hooks[0].accepts("channel_vacated"));
        assert!(hooks[1].event_types.is_empty());
        assert!(hooks[1].accepts("channel_vacated"));
        assert!(Apps::new(file.apps).is_ok());
        let r: Result<File, _> = toml::from_str(
            "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n\
             [[apps.webhooks]]\nurl = \"http://h/\"\nevents = [\"cache_miss\"]\n",
        );
        assert!(r.is_err(), "a misspelled webhook key is refused");
    }

    #[test]
    fn origins_are_checked_only_when_listed() {
        let mut app = App::default_dev();
        assert!(app.allows_origin(None));
        assert!(app.allows_origin(Some("https://x")));
        app.allowed_origins = vec!["https://a.example".into()];
        assert!(app.allows_origin(Some("https://a.example")));
        assert!(!app.allows_origin(Some("https://b.example")));
        assert!(!app.allows_origin(None));
        app.allowed_origins.push("*".into());
        assert!(app.allows_origin(Some("https://b.example")));
    }
}
