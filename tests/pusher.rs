//! The Pusher protocol end to end on the real binary (two shards), with a Rust WebSocket client
//! and signed HTTP API requests: connection, channels of every kind, presence across shards,
//! client events, the HTTP API and its refusals, sign-in, termination, cache channels, drain.
//! The real pusher-js / laravel-echo / pusher SDK run in tests/pusher_js.rs.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ringcast::http_api::signature::{body_md5_hex, sign_request};
use ringcast::pusher::auth;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use common::{Server, TEST_TIMEOUT, within};

const KEY: &str = "app-key";
const SECRET: &str = "app-secret";
const APP_ID: &str = "app-id";
const WAIT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn server(extra: &[&str]) -> Server {
    let mut args = vec!["--shards", "2"];
    args.extend_from_slice(extra);
    Server::start(common::IoMode::from_env(), &args).await
}

/// A Pusher client: connected, with its socket id.
struct Client {
    ws: Ws,
    socket_id: String,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client::connect_path(
            addr,
            &format!("/app/{KEY}?protocol=7&client=rust&version=1"),
        )
        .await
    }

    async fn connect_path(addr: SocketAddr, path: &str) -> Client {
        let (ws, _) = connect_async(format!("ws://{addr}{path}"))
            .await
            .expect("connect");
        let mut client = Client {
            ws,
            socket_id: String::new(),
        };
        let hello = client.expect("pusher:connection_established").await;
        let data: Value = serde_json::from_str(hello["data"].as_str().unwrap()).unwrap();
        client.socket_id = data["socket_id"].as_str().unwrap().to_owned();
        assert!(auth::is_valid_socket_id(&client.socket_id));
        assert_eq!(data["activity_timeout"], 120);
        client
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// The next text message, as JSON; None when the connection closed.
    async fn next(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(_))) => continue,
                Err(_) => panic!("no message within {WAIT:?}"),
            }
        }
    }

    /// Skips messages until one with event `event`.
    async fn expect(&mut self, event: &str) -> Value {
        loop {
            let m = self
                .next()
                .await
                .unwrap_or_else(|| panic!("closed waiting for {event}"));
            if m["event"] == event {
                return m;
            }
        }
    }

    /// Nothing arrives for a short while.
    async fn quiet(&mut self) {
        if let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(300), self.ws.next()).await
        {
            panic!("unexpected message {m:?}");
        }
    }

    /// The close frame's code (reading past other messages).
    async fn close_code(&mut self) -> u16 {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(f))))) => return u16::from(f.code),
                Ok(Some(Ok(Message::Close(None)))) => return 1005,
                Ok(Some(Ok(_))) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    }

    async fn subscribe(&mut self, channel: &str) {
        self.send(json!({"event":"pusher:subscribe","data":{"channel":channel}}))
            .await;
        self.expect("pusher_internal:subscription_succeeded").await;
    }

    async fn subscribe_private(&mut self, channel: &str) {
        let auth = auth::channel_auth(KEY, SECRET, &self.socket_id, channel, None);
        self.send(json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}}))
            .await;
        self.expect("pusher_internal:subscription_succeeded").await;
    }

    /// Joins a presence channel; returns the subscription_succeeded data.
    async fn join(&mut self, channel: &str, user_id: Value) -> Value {
        let data = json!({"user_id": user_id, "user_info": {"name": "n"}}).to_string();
        let auth = auth::channel_auth(KEY, SECRET, &self.socket_id, channel, Some(&data));
        self.send(json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth,"channel_data":data}}))
            .await;
        let m = self.expect("pusher_internal:subscription_succeeded").await;
        serde_json::from_str(m["data"].as_str().unwrap()).unwrap()
    }
}

/// One signed HTTP API request; returns (status, body).
async fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    api_with_secret(addr, method, path, params, body, SECRET).await
}

async fn api_with_secret(
    addr: SocketAddr,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &str,
    secret: &str,
) -> (u16, Value) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let md5 = body_md5_hex(body.as_bytes());
    let mut all: Vec<(&str, &str)> = vec![
        ("auth_key", KEY),
        ("auth_timestamp", &ts),
        ("auth_version", "1.0"),
    ];
    if !body.is_empty() {
        all.push(("body_md5", &md5));
    }
    all.extend_from_slice(params);
    let signature = sign_request(secret, method, path, &all);
    let query: Vec<String> = all
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .chain([format!("auth_signature={signature}")])
        .collect();
    let request = format!(
        "{method} {path}?{} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        query.join("&"),
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .expect("API answer in time")
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let status: u16 = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn trigger(addr: SocketAddr, body: Value) -> (u16, Value) {
    api(
        addr,
        "POST",
        &format!("/apps/{APP_ID}/events"),
        &[],
        &body.to_string(),
    )
    .await
}

/// Enough connections that both shards hold some (the kernel spreads them by hash).
async fn clients(addr: SocketAddr, n: usize) -> Vec<Client> {
    let mut out: Vec<Client> = Vec::new();
    let shard_of = |c: &Client| c.socket_id.split('.').next().unwrap().to_owned();
    for attempt in 0..64 {
        let c = Client::connect(addr).await;
        let shards: std::collections::HashSet<String> = out.iter().map(shard_of).collect();
        // Keep the first n, replacing the last ones until both shards are represented.
        if out.len() < n {
            out.push(c);
        } else if shards.len() < 2 && !shards.contains(&shard_of(&c)) {
            out.pop();
            out.push(c);
        }
        let shards: std::collections::HashSet<String> = out.iter().map(shard_of).collect();
        if out.len() == n && shards.len() == 2 {
            return out;
        }
        assert!(attempt < 63, "the kernel put every connection on one shard");
    }
    unreachable!()
}

#[tokio::test]
async fn connect_ping_and_unknown_app() {
    within(TEST_TIMEOUT, async {
        let server = server(&[]).await;
        let mut c = Client::connect(server.addr).await;
        c.send(json!({"event":"pusher:ping","data":{}})).await;
        c.expect("pusher:pong").await;
        let (ws, _) = connect_async(format!("ws://{}/app/nope?protocol=7", server.addr))
            .await
            .unwrap();
        let mut bad = Client {
            ws,
            socket_id: String::new(),
        };
        let err = bad.expect("pusher:error").await;
        assert_eq!(err["data"]["code"], 4001);
        assert_eq!(bad.close_code().await, 4001);
        for (path, code) in [
            ("/app/app-key", 4008),
            ("/app/app-key?protocol=x", 4006),
            ("/app/app-key?protocol=99", 4007),
        ] {
            let (ws, _) = connect_async(format!("ws://{}{path}", server.addr))
                .await
                .unwrap();
            let mut c = Client {
                ws,
                socket_id: String::new(),
            };
            assert_eq!(c.close_code().await, code, "{path}");
        }
    })
    .await;
}

#[tokio::test]
async fn publish_reaches_every_shard_once_and_excludes_socket_id() {
    within(TEST_TIMEOUT, async {
        let server = server(&[]).await;
        let mut subs = clients(server.addr, 8).await;
        for c in &mut subs {
            c.subscribe("news").await;
            c.subscribe("sport").await;
        }
        let excluded = subs[0].socket_id.clone();
        let (status, body) = trigger(
            server.addr,
            json!({"name":"flash","channels":["news","sport"],"data":"{\"n\":1}","socket_id":excluded}),
        )
        .await;
        assert_eq!((status, body), (200, json!({})));
        for c in &mut subs[1..] {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let m = c.expect("flash").await;
                assert_eq!(m["data"], "{\"n\":1}");
                seen.push(m["channel"].as_str().unwrap().to_owned());
            }
            seen.sort();
            assert_eq!(seen, ["news", "sport"]);
        }
        subs[0].quiet().await;
        for c in &mut subs[1..] {
            c.quiet().await;
        }
    })
    .await;
}

#[tokio::test]
async fn private_channels_need_a_valid_signature() {
    within(TEST_TIMEOUT, async {
        let server = server(&[]).await;
        let mut c = Client::connect(server.addr).await;
        c.send(
            json!({"event":"pusher:subscribe","data":{"channel":"private-a","auth":"app-key:00"}}),
        )
        .await;
        let err = c.expect("pusher:subscription_error").await;
        assert_eq!(err["data"]["status"], 401);
        c.subscribe_private("private-a").await;
    })
    .await;
}

#[tokio::test]
async fn client_events_reach_others_not_the_sender() {
    within(TEST_TIMEOUT, async {
        let server = server(&[]).await;
        let mut cs = clients(server.addr, 6).await;
        for c in &mut cs {
            c.subscribe_private("private-chat").await;
        }
        cs[0]
            .send(json!({"event":"client-typing","channel":"private-chat","data":{"who":"a"}}))
            .await;
        for c in &mut cs[1..] {
            let m = c.expect("client-typing").await;
            assert_eq!(m["data"]["who"], "a");
        }
        cs[0].quiet().await;
        // Public channels refuse client events.
        cs[1].subscribe("public").await;
        cs[1]
            .send(json!({"event":"client-x","channel":"public","data":{}}))
            .await;
        cs[1].expect("pusher:error").await;
    })
    .await;
}

#[tokio::test]
async fn presence_across_shards_counts_users_not_sockets() {
    within(TEST_TIMEOUT, async {
        let server = server(&[]).await;
        let mut cs = clients(server.addr, 6).await;
        let first = cs[0].join("presence-room", json!(1)).await;
        assert_eq!(first["presence"]["count"], 1);
        assert_eq!(first["presence"]["ids"], json!(["1"]));
        // Two more sockets of user 2 (integer ids normalised to strings), spread over shards.
        let data = cs[1].join("presence-room", json!(2)).await;
        assert_eq!(data["presence"]["count"], 2);
        let added = cs[0].expect("pusher_internal:member_added").await;
        assert_eq!(
            serde_json::from_str::<Value>(added["data"].as_str().unwrap()).unwrap()["user_id"],
            "2"
        );
        cs[2].join("presence-room", json!(2)).await;
        cs[0].quiet().await;
        let (status, users) = api(
            server.addr,
            "GET",
            &format!("/apps/{APP_ID}/channels/presence-room/users"),
            &[],
            "",
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(users, json!({"users":[{"id":"1"},{"id":"2"}]}));
        let (_, info) = api(
            server.addr,
            "GET",
            &format!("/apps/{APP_ID}/channels/presence-room"),
            &[("info", "user_count,subscription_count")],
            "",
        )
        .await;
        assert_eq!(
            info,
            json!({"occupied":true,"user_count":2,"subscription_count":3})
        );
        // User 2 leaves only when its last socket goes.
        let c1 = cs.remove(1);
        drop(c1);
        cs[0].quiet().await;
        let c2 = cs.remove(1);
        drop(c2);
        let removed = cs[0].expect("pusher_internal:member_removed").await;
        assert_eq!(
            serde_json::from_str::<Value>(removed["data"].as_str().unwrap()).unwrap()["user_id"],
            "2"
        );
    })
    .await;
}

#[tokio::test]
async fn channel_queries_answer_over_all_shards() {
    within(TEST_TIMEOUT, async {
        let server = server(&[]).await;
        let mut cs = clients(server.addr, 6).await;
        for c in &mut cs {
            c.subscribe("room-a").await;
        }
        cs[0].subscribe("other").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, list) = api(
            server.addr,
            "GET",
            &format!("/apps/{APP_ID}/channels"),
            &[
                ("filter_by_prefix", "room-"),
                ("info", "subscription_count"),
            ],
            "",
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            list,
            json!({"channels":{"room-a":{"subscription_count":6}}})
        );
        let (_, empty) = api(
            server.addr,
            "GET",
            &format!("/apps/{APP_ID}/channels/nobody"),
            &[],
            "",
        )
        .await;
        assert_eq!(empty, json!({"occupied":false}));
        let (status, info) = trigger(
            server.addr,
            json!({"name":"e","channel":"room-a","data":"x","info":"subscription_count"}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            info,
            json!({"channels":{"room-a":{"subscription_count":6}}})
        );
    })
    .await;
}

#[tokio::test]
async fn api_refusals_are_json_and_the_server_goes_on() {
    within(TEST_TIMEOUT, async {
        let server = server(&[]).await;
        let path = format!("/apps/{APP_ID}/events");
        let body = json!({"name":"e","channel":"c","data":"x"}).to_string();
        let (status, err) = api_with_secret(server.addr, "POST", &path, &[], &body, "wrong").await;
        assert_eq!(status, 401);
        assert!(err["error"].is_string(), "{err}");
        let (status, err) = api(server.addr, "POST", &path, &[], "{not json").await;
        assert_eq!(status, 400);
        assert!(err["error"].is_string());
        let big = json!({"name":"e","channel":"c","data":"x".repeat(20_000)}).to_string();
        let (status, _) = api(server.addr, "POST", &path, &[], &big).await;
        assert_eq!(status, 413);
        let (status, _) = trigger(server.addr, json!({"name":"e","channel":"c","data":"x"})).await;
        assert_eq!(status, 200);
    })
    .await;
}

#[tokio::test]
async fn signin_server_to_user_and_terminate() {
    within(TEST_TIMEOUT, async {
        let server = server(&[]).await;
        let mut cs = clients(server.addr, 4).await;
        for c in &mut cs[..3] {
            let user = r#"{"id":"42"}"#;
            let auth = auth::user_auth(KEY, SECRET, &c.socket_id, user);
            c.send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user}}))
                .await;
            c.expect("pusher:signin_success").await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, _) = trigger(
            server.addr,
            json!({"name":"dm","channel":"#server-to-user-42","data":"hi"}),
        )
        .await;
        assert_eq!(status, 200);
        for c in &mut cs[..3] {
            assert_eq!(c.expect("dm").await["data"], "hi");
        }
        let (status, _) = api(
            server.addr,
            "POST",
            &format!("/apps/{APP_ID}/users/42/terminate_connections"),
            &[],
            "{}",
        )
        .await;
        assert_eq!(status, 200);
        for c in &mut cs[..3] {
            assert_eq!(c.close_code().await, 4009);
        }
        cs[3].send(json!({"event":"pusher:ping","data":{}})).await;
        cs[3].expect("pusher:pong").await;
    })
    .await;
}

#[tokio::test]
async fn cache_channels_replay_the_last_event_or_miss() {
    within(TEST_TIMEOUT, async {
        let server = server(&[]).await;
        let mut a = Client::connect(server.addr).await;
        a.subscribe("cache-prices").await;
        a.expect("pusher:cache_miss").await;
        let (status, _) = trigger(
            server.addr,
            json!({"name":"price","channel":"cache-prices","data":"1"}),
        )
        .await;
        assert_eq!(status, 200);
        trigger(
            server.addr,
            json!({"name":"price","channel":"cache-prices","data":"2"}),
        )
        .await;
        // cache_miss came first; then each live event once, never a replay of the cache.
        assert_eq!(a.expect("price").await["data"], "1");
        assert_eq!(a.expect("price").await["data"], "2");
        a.quiet().await;
        for _ in 0..4 {
            let mut b = Client::connect(server.addr).await;
            b.subscribe("cache-prices").await;
            assert_eq!(b.expect("price").await["data"], "2");
        }
    })
    .await;
}

#[tokio::test]
async fn drain_closes_pusher_connections_with_4200() {
    within(TEST_TIMEOUT, async {
        let mut server = server(&["--drain-timeout-ms", "2000"]).await;
        let mut c = Client::connect(server.addr).await;
        c.subscribe("x").await;
        server.signal("TERM").await;
        assert_eq!(c.close_code().await, 4200);
        let status = server.wait_exit(Duration::from_secs(10)).await;
        assert!(status.success(), "{status:?}");
    })
    .await;
}

#[tokio::test]
async fn binary_messages_are_refused_with_1003() {
    within(TEST_TIMEOUT, async {
        let server = server(&[]).await;
        let mut c = Client::connect(server.addr).await;
        c.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
        assert_eq!(c.close_code().await, u16::from(CloseCode::Unsupported));
    })
    .await;
}

/// A config file with one app `k1`/`s1`, as given in `extra` TOML lines.
fn app_config(extra: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "ringcast-pusher-{}-{}.toml",
        std::process::id(),
        extra.len()
    ));
    std::fs::write(
        &path,
        format!("[[apps]]\nid = \"1\"\nkey = \"k1\"\nsecret = \"s1\"\n{extra}\n"),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn origin_outside_allowed_origins_gets_403_before_the_upgrade() {
    within(TEST_TIMEOUT, async {
        let config = app_config("allowed_origins = [\"https://good.example\"]");
        let server = server(&["--config", config.to_str().unwrap()]).await;
        let request = |origin: &str| {
            format!(
                "GET /app/k1?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
            )
        };
        let mut bad = common::RawConn::connect(server.addr).await;
        bad.send(request("https://evil.example").as_bytes()).await;
        assert_eq!(bad.read_response_head().await.status, 403);
        let mut good = common::RawConn::connect(server.addr).await;
        good.send(request("https://good.example").as_bytes()).await;
        assert_eq!(good.read_response_head().await.status, 101);
    })
    .await;
}

#[tokio::test]
async fn connections_over_the_app_quota_are_closed_with_4004() {
    within(TEST_TIMEOUT, async {
        let config = app_config("max_connections = 2");
        let server = server(&["--config", config.to_str().unwrap()]).await;
        let path = "/app/k1?protocol=7";
        let _a = Client::connect_path(server.addr, path).await;
        let b = Client::connect_path(server.addr, path).await;
        let (ws, _) = connect_async(format!("ws://{}{path}", server.addr))
            .await
            .unwrap();
        let mut third = Client {
            ws,
            socket_id: String::new(),
        };
        assert_eq!(third.close_code().await, 4004);
        // A closed connection frees its place.
        drop(b);
        tokio::time::sleep(Duration::from_millis(300)).await;
        Client::connect_path(server.addr, path).await;
    })
    .await;
}

#[tokio::test]
async fn watchlists_hear_when_watched_users_come_and_go() {
    within(TEST_TIMEOUT, async {
        let server = server(&[]).await;
        let mut cs = clients(server.addr, 3).await;
        let signin = |c: &Client, user: Value| {
            let data = user.to_string();
            let auth = auth::user_auth(KEY, SECRET, &c.socket_id, &data);
            json!({"event":"pusher:signin","data":{"auth":auth,"user_data":data}})
        };
        let frame = signin(&cs[0], json!({"id":"me","watchlist":["friend", 7]}));
        cs[0].send(frame).await;
        cs[0].expect("pusher:signin_success").await;
        let first = cs[0].expect("pusher_internal:watchlist_events").await;
        let data: Value = serde_json::from_str(first["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            data,
            json!({"events":[{"name":"offline","user_ids":["friend","7"]}]})
        );
        let frame = signin(&cs[1], json!({"id": 7}));
        cs[1].send(frame).await;
        cs[1].expect("pusher:signin_success").await;
        let online = cs[0].expect("pusher_internal:watchlist_events").await;
        let data: Value = serde_json::from_str(online["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, json!({"events":[{"name":"online","user_ids":["7"]}]}));
        drop(cs.remove(1));
        let offline = cs[0].expect("pusher_internal:watchlist_events").await;
        let data: Value = serde_json::from_str(offline["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            data,
            json!({"events":[{"name":"offline","user_ids":["7"]}]})
        );
    })
    .await;
}

#[tokio::test]
async fn channels_over_the_app_limit_are_refused_until_one_is_freed() {
    within(TEST_TIMEOUT, async {
        let config = app_config("max_channels = 2");
        let server = Server::start(
            common::IoMode::from_env(),
            &["--shards", "1", "--config", config.to_str().unwrap()],
        )
        .await;
        let path = "/app/k1?protocol=7";
        let mut c = Client::connect_path(server.addr, path).await;
        c.subscribe("a").await;
        c.subscribe("b").await;
        c.send(json!({"event":"pusher:subscribe","data":{"channel":"c"}}))
            .await;
        let err = c.expect("pusher:subscription_error").await;
        assert_eq!(err["channel"], "c");
        assert_eq!(err["data"]["type"], "LimitReached");
        // Another subscriber of an existing channel is no new channel.
        let mut d = Client::connect_path(server.addr, path).await;
        d.subscribe("a").await;
        c.send(json!({"event":"pusher:unsubscribe","data":{"channel":"b"}}))
            .await;
        c.subscribe("c").await;
    })
    .await;
}

/// A local webhook receiver: records every (path, body) and answers 200.
struct HookReceiver {
    addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
}

impl HookReceiver {
    async fn start() -> HookReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let sink = std::sync::Arc::clone(&sink);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let Ok(n) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        // One request at a time: head, then Content-Length bytes.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse().unwrap());
                            if buf.len() < end + 4 + len {
                                break;
                            }
                            let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                            let body: Value =
                                serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap();
                            buf.drain(..end + 4 + len);
                            sink.lock().unwrap().push((path, body));
                            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                            if stream.write_all(ok).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        HookReceiver { addr, seen }
    }

    /// Every event received so far as (name, channel), in arrival order.
    fn events(&self) -> Vec<(String, String)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, body)| body["events"].as_array().cloned().unwrap_or_default())
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or("").to_owned(),
                    e["channel"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    async fn wait_for(&self, name: &str, channel: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.events().iter().any(|(n, c)| n == name && c == channel) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {name} for {channel}: {:?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn webhooks_fire_once_per_transition_over_all_shards() {
    within(TEST_TIMEOUT, async {
        let hooks = HookReceiver::start().await;
        let config = app_config(&format!(
            "enable_client_events = true\n[[apps.webhooks]]\nurl = \"http://{0}/hook\"\n\
             [[apps.webhooks]]\nurl = \"http://{0}/occupied-only\"\n\
             event_types = [\"channel_occupied\"]",
            hooks.addr
        ));
        let server = server(&["--config", config.to_str().unwrap()]).await;
        let path = "/app/k1?protocol=7";
        let mut cs = Vec::new();
        let mut shards = std::collections::HashSet::new();
        while shards.len() < 2 || cs.len() < 4 {
            let c = Client::connect_path(server.addr, path).await;
            shards.insert(c.socket_id.split('.').next().unwrap().to_owned());
            cs.push(c);
            assert!(cs.len() < 64, "every connection on one shard");
        }
        for c in &mut cs {
            c.subscribe("hooked").await;
        }
        hooks.wait_for("channel_occupied", "hooked").await;
        cs[0].subscribe("cache-nothing").await;
        hooks.wait_for("cache_miss", "cache-nothing").await;
        drop(cs);
        hooks.wait_for("channel_vacated", "hooked").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let count = |name: &str| {
            hooks
                .events()
                .iter()
                .filter(|(n, c)| n == name && c == "hooked")
                .count()
        };
        // Each URL gets its own copy; the filtered one only what it asked for.
        let at = |path: &str| {
            let seen = hooks.seen.lock().unwrap();
            let mut names: Vec<String> = seen
                .iter()
                .filter(|(p, _)| p == path)
                .flat_map(|(_, b)| b["events"].as_array().cloned().unwrap_or_default())
                .filter(|e| e["channel"] == "hooked")
                .map(|e| e["name"].as_str().unwrap().to_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(at("/hook"), ["channel_occupied", "channel_vacated"]);
        assert_eq!(at("/occupied-only"), ["channel_occupied"]);
        assert_eq!(
            (count("channel_occupied"), count("channel_vacated")),
            (2, 1)
        );
    })
    .await;
}

#[tokio::test]
async fn over_the_server_connection_limit_pusher_clients_get_4100() {
    within(TEST_TIMEOUT, async {
        let server = Server::start(
            common::IoMode::from_env(),
            &["--shards", "1", "--max-connections", "1"],
        )
        .await;
        let _first = Client::connect(server.addr).await;
        let (ws, _) = connect_async(format!("ws://{}/app/{KEY}?protocol=7", server.addr))
            .await
            .expect("the upgrade completes so the refusal speaks Pusher");
        let mut second = Client {
            ws,
            socket_id: String::new(),
        };
        let err = second.expect("pusher:error").await;
        assert_eq!(err["data"]["code"], 4100);
        assert_eq!(second.close_code().await, 4100);
        // Anything else over the limit still gets 503.
        let mut raw = common::RawConn::connect(server.addr).await;
        raw.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(raw.read_response_head().await.status, 503);
    })
    .await;
}

/// Mutated protocol frames from several connections at once: the server answers or refuses
/// each, never panics, and keeps serving.
#[tokio::test]
async fn mutated_frames_never_bring_the_server_down() {
    within(Duration::from_secs(60), async {
        let server = server(&[]).await;
        let mut cs = clients(server.addr, 4).await;
        let mut seeds = Vec::new();
        for c in &cs {
            let data = json!({"user_id": 5, "user_info": {"n": "x"}}).to_string();
            let presence = auth::channel_auth(KEY, SECRET, &c.socket_id, "presence-f", Some(&data));
            let private = auth::channel_auth(KEY, SECRET, &c.socket_id, "private-f", None);
            let user = r#"{"id":"9","watchlist":["9",1]}"#;
            let signin = auth::user_auth(KEY, SECRET, &c.socket_id, user);
            seeds.push(vec![
                json!({"event":"pusher:subscribe","data":{"channel":"presence-f","auth":presence,"channel_data":data}}).to_string(),
                json!({"event":"pusher:subscribe","data":{"channel":"private-f","auth":private}}).to_string(),
                json!({"event":"pusher:subscribe","data":{"channel":"cache-f"}}).to_string(),
                json!({"event":"pusher:signin","data":{"auth":signin,"user_data":user}}).to_string(),
                json!({"event":"client-x","channel":"private-f","data":{"a":[1,2]}}).to_string(),
                json!({"event":"client-x","channel":"presence-f","data":"s"}).to_string(),
                json!({"event":"pusher:unsubscribe","data":{"channel":"presence-f"}}).to_string(),
                json!({"event":"pusher:ping","data":{}}).to_string(),
            ]);
        }
        let alphabet = b"{}[]\":,\\ event data channel pusher:subscribe client- private- presence- #server-to-user- 0123456789";
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..300 {
            for (i, c) in cs.iter_mut().enumerate() {
                let seed = &seeds[i][next() as usize % seeds[i].len()];
                let mut bytes = seed.clone().into_bytes();
                for _ in 0..(next() % 4) {
                    if bytes.is_empty() {
                        break;
                    }
                    let at = next() as usize % bytes.len();
                    match next() % 3 {
                        0 => bytes[at] = alphabet[next() as usize % alphabet.len()],
                        1 => {
                            bytes.remove(at);
                        }
                        _ => bytes.truncate(at),
                    }
                }
                let text = String::from_utf8_lossy(&bytes).into_owned();
                if c.ws.send(Message::text(text)).await.is_err() {
                    // Closed by the server (4301 rate limits are errors, not closes, so
                    // this is a protocol close): reconnect and go on.
                    *c = Client::connect(server.addr).await;
                }
            }
            if round % 50 == 0 {
                for c in cs.iter_mut() {
                    // Drain what arrived so the server never sees a stalled reader.
                    while let Ok(Some(_)) =
                        tokio::time::timeout(Duration::from_millis(5), c.ws.next()).await
                    {}
                }
            }
        }
        // Both shards (and the hub behind presence) still answer.
        for mut fresh in clients(server.addr, 2).await {
            fresh.send(json!({"event":"pusher:ping","data":{}})).await;
            fresh.expect("pusher:pong").await;
            fresh.join("presence-after", json!("z")).await;
        }
        let (status, _) = trigger(server.addr, json!({"name":"e","channel":"c","data":"x"})).await;
        assert_eq!(status, 200);
    })
    .await;
}
