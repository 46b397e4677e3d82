//! HTTP cases: every route of `crates/agentcom-http/src/routes.rs` with a valid body and
//! query, then mutated — path segments, query strings, bodies, content types and
//! credentials.

use std::fmt;
use std::sync::LazyLock;

use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Value};

use crate::input::{self, Fixtures, Mutation};

/// What a path parameter names, for its known values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    Agent,
    Actor,
    Message,
    Channel,
    Task,
    Backup,
}

impl Param {
    /// Values that exist on the fuzzed hub (placeholders resolved at run time), and a few
    /// that almost do.
    fn known(self) -> &'static [&'static str] {
        match self {
            Param::Agent => &["alice", "bob", "vera", "admin", "ghost", "worker"],
            Param::Actor => &[
                "store",
                "mailbox",
                "scheduler",
                "task_queue",
                "auth",
                "nope",
            ],
            Param::Message => &["$MSG0", "$MSG1", "msg-0000000000000000"],
            Param::Channel => &["dev", "DEV", "#dev", "ghost-channel"],
            Param::Task => &["$TASK0", "$DEAD", "task-0000000000000000"],
            Param::Backup => &["$BACKUP", "latest", ".."],
        }
    }
}

/// One route: method, path (`{}` for its parameter), the credential it is meant for, a
/// valid body and its query keys.
#[derive(Debug)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub param: Option<Param>,
    /// The fixture token the route is meant for (most cases carry it).
    pub who: &'static str,
    /// A valid body (`{}` for routes that take none).
    pub body: Value,
    pub query: &'static [&'static str],
}

fn route(method: &'static str, path: &'static str) -> Route {
    Route {
        method,
        path,
        param: None,
        who: "$ALICE",
        body: json!({}),
        query: &[],
    }
}

impl Route {
    fn param(self, param: Param) -> Self {
        Route {
            param: Some(param),
            ..self
        }
    }

    fn admin(self) -> Self {
        Route {
            who: "$ADMIN",
            ..self
        }
    }

    fn viewer(self) -> Self {
        Route {
            who: "$VIEWER",
            ..self
        }
    }

    fn body(self, body: Value) -> Self {
        Route { body, ..self }
    }

    fn query(self, query: &'static [&'static str]) -> Self {
        Route { query, ..self }
    }
}

/// Every route the hub serves (the test-only crash hook is off on the fuzzed hub).
pub static ROUTES: LazyLock<Vec<Route>> = LazyLock::new(|| {
    use Param::*;
    vec![
        route("GET", "/health"),
        route("GET", "/api/config/heartbeat-interval").query(&["token"]),
        route("PUT", "/api/config/heartbeat-interval").admin().body(json!({"heartbeat_interval_ms": 30000})),
        route("GET", "/api/config/mailbox-retention").query(&["token"]),
        route("PUT", "/api/config/mailbox-retention").admin().body(json!({"mailbox_ttl_ms": 600000})),
        route("GET", "/api/config/default-repo"),
        route("PUT", "/api/config/default-repo").admin().body(json!({"url": "https://example.com/repo.git"})),
        route("POST", "/admin/tokens").admin().body(json!({"agent_id": "carol", "role": "agent"})),
        route("GET", "/admin/tokens").admin(),
        route("DELETE", "/admin/tokens/{}").param(Agent).admin(),
        route("GET", "/api/admin/actors").admin(),
        route("POST", "/api/admin/actors/{}/restart").param(Actor).admin(),
        route("POST", "/api/admin/actors/{}/crash").param(Actor).admin(),
        route("GET", "/ws"),
        route("GET", "/ws/dashboard").viewer(),
        route("GET", "/api/agents"),
        route("GET", "/api/agents/states"),
        route("GET", "/api/agents/{}/state").param(Agent),
        route("GET", "/api/agents/{}/subscriptions").param(Agent),
        route("POST", "/api/message").body(json!({"to": "bob", "payload": {"text": "hi"}, "type": "chat", "reply_to": "$MSG0"})),
        route("POST", "/api/mailbox/evict").admin(),
        route("GET", "/api/mailbox/{}").param(Agent).query(&["since", "token"]),
        route("POST", "/api/mailbox/{}/ack").param(Agent).body(json!({"seq": "$SEQ"})),
        route("GET", "/api/messages").query(&["from", "to", "channel", "start_time", "end_time", "cursor", "limit", "token"]),
        route("GET", "/api/threads/{}").param(Message).query(&["token"]),
        route("GET", "/api/threads/{}/replies").param(Message).query(&["token"]),
        route("GET", "/api/threads/{}/root").param(Message).query(&["token"]),
        route("GET", "/api/channels"),
        route("POST", "/api/channels").body(json!({"name": "ops", "description": "operations"})),
        route("GET", "/api/channels/{}").param(Channel),
        route("POST", "/api/channels/{}/subscribe").param(Channel),
        route("POST", "/api/channels/{}/unsubscribe").param(Channel),
        route("POST", "/api/channels/{}/publish").param(Channel).body(json!({"payload": {"x": 1}, "message_type": "chat", "reply_to": null})),
        route("GET", "/api/channels/{}/history").param(Channel).query(&["limit", "since"]),
        route("POST", "/api/admin/reset").admin(),
        route("GET", "/api/analytics/summary"),
        route("GET", "/api/analytics/agents"),
        route("GET", "/api/analytics/agents/{}/hourly").param(Agent),
        route("POST", "/api/onboard/register").admin().body(json!({"agent_id": "newbie"})),
        route("POST", "/api/tasks").body(json!({
            "description": "build it", "priority": "high", "metadata": {"repo": "x"},
            "max_retries": 3, "complete_by": null, "needed_capabilities": ["code"],
        })),
        route("GET", "/api/tasks").query(&["status", "priority", "assigned_to"]),
        route("GET", "/api/tasks/dead-letter"),
        route("GET", "/api/tasks/stats"),
        route("GET", "/api/tasks/{}").param(Task),
        route("POST", "/api/tasks/{}/retry").param(Task).admin(),
        route("POST", "/api/admin/push-task").admin().body(json!({"agent_id": "alice", "description": "now", "metadata": {}})),
        route("POST", "/api/admin/backup").admin(),
        route("GET", "/api/admin/backups").admin(),
        route("POST", "/api/admin/backups/{}/verify").param(Backup).admin(),
        route("GET", "/api/admin/dets-health").admin(),
        route("GET", "/api/admin/storage-health").admin(),
        route("GET", "/sw.js"),
        route("GET", "/api/dashboard/vapid-key"),
        route("POST", "/api/dashboard/push-subscribe").viewer().body(json!({
            "endpoint": "https://push.example.com/send/abc",
            "keys": {"p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM", "auth": "tBHItJI5svbpez7KI4CCXg"},
        })),
        route("GET", "/api/dashboard/state").viewer(),
        route("GET", "/dashboard"),
        route("POST", "/api/dashboard/login").body(json!({"token": "$VIEWER"})),
        route("POST", "/api/dashboard/logout").viewer(),
        route("GET", "/api/dashboard/whoami").viewer(),
        route("GET", "/metrics").admin(),
    ]
});

/// Who the request claims to be.
#[derive(Debug, Clone)]
pub enum Auth {
    /// The token the route is meant for.
    Meant,
    None,
    /// `Authorization: Bearer <fixture token>` (`$ADMIN`, `$ALICE`, …).
    Bearer(&'static str),
    /// `Authorization: Bearer <text>`.
    BearerText(String),
    /// An `Authorization` header that is not a well-formed Bearer.
    Raw(&'static str),
    /// Two `Authorization` headers, both valid.
    Twice,
    /// The dashboard's session cookie, with a made-up secret.
    Cookie(String),
}

fn auth() -> BoxedStrategy<Auth> {
    prop_oneof![
        12 => Just(Auth::Meant),
        1 => Just(Auth::None),
        4 => select(&["$ADMIN", "$ALICE", "$BOB", "$VIEWER"][..]).prop_map(Auth::Bearer),
        1 => input::text().prop_map(Auth::BearerText),
        1 => select(&["Bearer", "Bearer ", "bearer $ADMIN", "Basic YWRtaW46YWRtaW4=", "Token $ADMIN", "Bearer  $ADMIN  x"][..])
            .prop_map(Auth::Raw),
        1 => Just(Auth::Twice),
        1 => "[a-zA-Z0-9%=;]{0,64}".prop_map(Auth::Cookie),
    ]
    .boxed()
}

/// A path segment as sent: a known value, hostile text (percent-encoded), or a segment
/// that is itself broken encoding.
#[derive(Debug, Clone)]
pub enum Segment {
    Known(Index),
    Text(String),
    Raw(&'static str),
}

fn segment() -> BoxedStrategy<Segment> {
    prop_oneof![
        6 => any::<Index>().prop_map(Segment::Known),
        3 => input::text().prop_map(Segment::Text),
        1 => select(&["%", "%zz", "%00", "%ff%fe", "%2F", "%2e%2e", "a%20b", "%C0%AF", "."][..])
            .prop_map(Segment::Raw),
    ]
    .boxed()
}

/// The body: the route's valid one, mutated, in one of several encodings.
#[derive(Debug, Clone)]
pub enum Body {
    /// The route's body (or `{}`), mutated, sent as `application/json` or as
    /// `content_type`, or with no content type at all (`None`).
    Json {
        mutations: Vec<Mutation>,
        content_type: Option<&'static str>,
    },
    /// The route's body, mutated, cut short after this fraction of its bytes.
    Truncated(Vec<Mutation>, Index),
    /// Text that is not JSON.
    Broken(String),
    /// Bytes that are not UTF-8.
    Bytes(Vec<u8>),
    /// A body one byte over the 1 MiB limit.
    Oversized,
    /// No body.
    Empty,
}

fn body() -> BoxedStrategy<Body> {
    let content_type = prop_oneof![
        12 => Just(Some("application/json")),
        1 => Just(None),
        1 => select(&[
            "application/json; charset=latin1", "application/vnd.agentcom+json", "text/plain",
            "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "APPLICATION/JSON", "",
        ][..]).prop_map(Some),
    ];
    prop_oneof![
        12 => (input::mutations(), content_type)
            .prop_map(|(mutations, content_type)| Body::Json { mutations, content_type }),
        1 => (input::mutations(), any::<Index>()).prop_map(|(m, i)| Body::Truncated(m, i)),
        1 => input::broken_json().prop_map(Body::Broken),
        1 => prop::collection::vec(0x80u8..=0xff, 1..64).prop_map(Body::Bytes),
        1 => Just(Body::Oversized),
        1 => Just(Body::Empty),
    ]
    .boxed()
}

/// One query parameter (or a raw piece of a query string).
#[derive(Debug, Clone)]
pub enum QueryPart {
    /// One of the route's keys, with a value.
    Known(Index, String),
    /// Any key and value.
    Pair(String, String),
    /// Not a `key=value` pair at all.
    Raw(&'static str),
}

fn query_value() -> BoxedStrategy<String> {
    prop_oneof![
        3 => select(&[
            "0", "1", "-1", "50", "200", "201", "18446744073709551615", "18446744073709551616",
            "1.5", "1e3", "0x10", " 1", "abc", "", "queued", "assigned", "completed",
            "dead_letter", "urgent", "high", "low", "3", "4", "alice", "bob", "dev", "$ALICE",
            "$ADMIN", "$VIEWER", "$SEQ",
        ][..]).prop_map(str::to_string),
        1 => input::text(),
    ]
    .boxed()
}

fn query() -> BoxedStrategy<Vec<QueryPart>> {
    let part = prop_oneof![
        6 => (any::<Index>(), query_value()).prop_map(|(i, v)| QueryPart::Known(i, v)),
        2 => (input::text(), query_value()).prop_map(|(k, v)| QueryPart::Pair(k, v)),
        1 => select(&["&", "=", "==", "a=b=c", "&&&", "limit", "limit=", "=1", "%", "%zz=%zz", "a[]=1"][..])
            .prop_map(QueryPart::Raw),
    ];
    prop::collection::vec(part, 0..4).boxed()
}

/// The method: the route's own, most of the time.
fn method() -> BoxedStrategy<Option<&'static str>> {
    prop_oneof![
        12 => Just(None),
        1 => select(&["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FUZZ"][..])
            .prop_map(Some),
    ]
    .boxed()
}

/// One fuzzed HTTP request, before its fixtures are resolved.
#[derive(Clone)]
pub struct HttpCase {
    pub route: &'static Route,
    pub method: Option<&'static str>,
    pub segment: Segment,
    pub query: Vec<QueryPart>,
    pub auth: Auth,
    pub body: Body,
}

impl fmt::Debug for HttpCase {
    // Shrunk cases are printed on failure: keep megabyte strings readable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = format!(
            "HttpCase {{ route: {} {}, method: {:?}, segment: {:?}, query: {:?}, auth: {:?}, body: {:?} }}",
            self.route.method, self.route.path, self.method, self.segment, self.query, self.auth, self.body
        );
        f.write_str(&crate::common::abbreviate(&full, 4000))
    }
}

pub fn http_case() -> impl Strategy<Value = HttpCase> {
    (
        (0..ROUTES.len()).prop_map(|i| &ROUTES[i]),
        method(),
        segment(),
        query(),
        auth(),
        body(),
    )
        .prop_map(|(route, method, segment, query, auth, body)| HttpCase {
            route,
            method,
            segment,
            query,
            auth,
            body,
        })
}

/// A request ready to send.
pub struct Concrete {
    pub method: String,
    pub path: String,
    pub headers: Vec<(&'static str, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl fmt::Display for Concrete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v)))
            .collect();
        let text = format!(
            "{} {} [{}] body {:?}",
            self.method,
            self.path,
            headers.join("; "),
            String::from_utf8_lossy(&self.body)
        );
        f.write_str(&crate::common::abbreviate(&text, 2000))
    }
}

/// Percent-encode everything but the unreserved characters.
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl HttpCase {
    /// Whether the request targets the token table (a revocation may take the fixtures'
    /// tokens away).
    pub fn touches_tokens(&self) -> bool {
        self.route.path.starts_with("/admin/tokens/")
    }

    pub fn concrete(&self, fx: &Fixtures) -> Concrete {
        let route = self.route;
        let segment = match (&self.segment, route.param) {
            (_, None) => String::new(),
            (Segment::Known(i), Some(p)) => pct(&fx.text(i.get::<&str>(p.known()))),
            (Segment::Text(t), Some(_)) => pct(&fx.text(t)),
            (Segment::Raw(r), Some(_)) => r.to_string(),
        };
        let mut path = route.path.replace("{}", &segment);
        let pairs: Vec<String> = self
            .query
            .iter()
            .filter_map(|q| match q {
                QueryPart::Known(i, v) if !route.query.is_empty() => {
                    Some(format!("{}={}", i.get(route.query), pct(&fx.text(v))))
                }
                QueryPart::Known(..) => None,
                QueryPart::Pair(k, v) => Some(format!("{}={}", pct(&fx.text(k)), pct(&fx.text(v)))),
                QueryPart::Raw(r) => Some(r.to_string()),
            })
            .collect();
        if !pairs.is_empty() {
            path.push('?');
            path.push_str(&pairs.join("&"));
        }
        let token = |p: &str| fx.text(p).into_bytes();
        let mut headers: Vec<(&'static str, Vec<u8>)> = Vec::new();
        match &self.auth {
            Auth::None => {}
            Auth::Meant => headers.push((
                "authorization",
                [b"Bearer ".to_vec(), token(route.who)].concat(),
            )),
            Auth::Bearer(p) => {
                headers.push(("authorization", [b"Bearer ".to_vec(), token(p)].concat()))
            }
            Auth::BearerText(t) => headers.push((
                "authorization",
                // Header values cannot hold control characters: those are encoded.
                format!("Bearer {}", t.replace(|c: char| c.is_control(), "%")).into_bytes(),
            )),
            Auth::Raw(r) => headers.push((
                "authorization",
                r.replace("$ADMIN", &fx.text("$ADMIN")).into_bytes(),
            )),
            Auth::Twice => {
                headers.push((
                    "authorization",
                    [b"Bearer ".to_vec(), token("$ADMIN")].concat(),
                ));
                headers.push((
                    "authorization",
                    [b"Bearer ".to_vec(), token("$ALICE")].concat(),
                ));
            }
            Auth::Cookie(c) => {
                headers.push(("cookie", format!("agentcom_session={c}").into_bytes()))
            }
        }
        let method = self.method.unwrap_or(route.method);
        let template = &route.body;
        let body = match &self.body {
            Body::Json {
                mutations,
                content_type,
            } => {
                if let Some(ct) = content_type {
                    headers.push(("content-type", ct.as_bytes().to_vec()));
                }
                input::render(template, mutations, fx).into_bytes()
            }
            Body::Truncated(mutations, at) => {
                headers.push(("content-type", b"application/json".to_vec()));
                let text = input::render(template, mutations, fx).into_bytes();
                let cut = at.index(text.len().max(1));
                text[..cut].to_vec()
            }
            Body::Broken(text) => {
                headers.push(("content-type", b"application/json".to_vec()));
                text.clone().into_bytes()
            }
            Body::Bytes(bytes) => {
                headers.push(("content-type", b"application/json".to_vec()));
                bytes.clone()
            }
            // Known defect, not fuzzed: the hub closes a connection at once when it answered
            // without reading a large body (a GET's, or before a 401/413), so the kernel
            // resets it and a long answer (`GET /dashboard`, 70 KB) can arrive cut short
            // (RFC 9112 §9.6 asks for a half-close and a drain). An oversized body goes to
            // routes that read bodies only.
            Body::Oversized if matches!(method, "GET" | "HEAD") => Vec::new(),
            Body::Oversized => {
                headers.push(("content-type", b"application/json".to_vec()));
                let mut big = b"{\"pad\":\"".to_vec();
                big.resize((1 << 20) - 1, b'x');
                big.extend_from_slice(b"\"}");
                big
            }
            Body::Empty => Vec::new(),
        };
        Concrete {
            method: method.to_string(),
            path,
            headers,
            body,
        }
    }
}
