//! Request and response plumbing shared by every handler: JSON bodies, errors, auth.

use std::time::Duration;

use agentcom_core::json::{client_depth_ok, MAX_CLIENT_DEPTH};
use agentcom_core::rate::Limited;
use agentcom_core::task::TaskError;
use agentcom_hub::service::ServiceError;
use agentcom_hub::supervisor::SupervisorError;
use agentcom_hub::{Hub, HubError, Principal};
use bytes::Bytes;
use http::{header, HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::body::Incoming;
use serde_json::{Map, Value};

pub type Response = hyper::Response<Full<Bytes>>;
pub type Request = hyper::Request<Incoming>;

/// A JSON response.
pub fn json(status: StatusCode, body: Value) -> Response {
    json_text(status, body.to_string())
}

/// An answer whose JSON text is already made.
pub fn json_text(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut res = hyper::Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    res
}

pub fn ok(body: Value) -> Response {
    json(StatusCode::OK, body)
}

/// An error answer: `{"error": code, "message"?, "field"?}` plus extra fields.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str) -> Self {
        let mut body = Map::new();
        body.insert("error".into(), code.into());
        ApiError { status, body }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.body.insert(key.into(), value.into());
        self
    }

    pub fn bad_request(code: &str) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code)
    }

    pub fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found")
    }

    /// The reference's A1 failure.
    pub fn unauthorized_bearer() -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized")
            .with("hint", "provide Authorization: Bearer <token>")
    }

    pub fn unauthorized() -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized")
    }

    pub fn admin_only() -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "admin_only")
            .with("message", "this route needs an admin token")
    }

    /// `429 {"error":"rate_limited","retry_after_ms",…}`: over a rate limit, not acted on.
    pub fn rate_limited(limited: Limited) -> Self {
        let ms = limited.retry_after_ms();
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited")
            .with("retry_after_ms", ms)
            .with("message", rate_limited_message(ms))
    }

    /// The answer; an error that says when to retry (`retry_after_ms`) also carries a
    /// `Retry-After` header, in whole seconds rounded up.
    pub fn into_response(self) -> Response {
        let retry_after = self.body.get("retry_after_ms").and_then(Value::as_u64);
        let mut res = json(self.status, Value::Object(self.body));
        if let Some(ms) = retry_after {
            res.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(ms.div_ceil(1000)),
            );
        }
        res
    }
}

/// The message of a `rate_limited` error, on HTTP and on websockets.
pub fn rate_limited_message(retry_after_ms: u64) -> String {
    format!("too many requests: retry in {retry_after_ms} ms")
}

/// The one place where hub errors become status codes and error codes.
impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        let message = e.to_string();
        match e {
            HubError::Invalid { field, .. } => {
                ApiError::bad_request("invalid_field").with("field", field)
            }
            HubError::Service(ServiceError::Timeout(_)) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "actor_timeout")
            }
            HubError::Service(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "actor_unavailable")
            }
            HubError::Store(agentcom_store::StoreError::Refused(why)) => {
                return ApiError::bad_request("invalid_body").with("message", why)
            }
            HubError::Store(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
            HubError::Supervisor(SupervisorError::UnknownActor(_)) => {
                ApiError::new(StatusCode::NOT_FOUND, "actor_not_found")
            }
            HubError::Supervisor(SupervisorError::NotRestartable(_)) => {
                ApiError::new(StatusCode::CONFLICT, "actor_not_restartable")
            }
            HubError::Supervisor(SupervisorError::NoCrashHook(_)) => ApiError::not_found(),
            HubError::Supervisor(SupervisorError::StartFailed { .. }) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "actor_start_failed")
            }
            // These carry the reference's literal error strings: no message beside them.
            HubError::NotFound(code) => return ApiError::new(StatusCode::NOT_FOUND, code),
            HubError::Conflict(code) => return ApiError::new(StatusCode::CONFLICT, code),
            HubError::Task(TaskError::NotFound) => {
                return ApiError::new(StatusCode::NOT_FOUND, "task_not_found")
            }
            HubError::Task(e) => ApiError::new(StatusCode::CONFLICT, &e.to_string()),
            HubError::Compaction(why) => {
                return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "compaction_failed")
                    .with("message", why)
            }
            HubError::QuotaExceeded { quota, limit } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded")
                    .with("quota", quota)
                    .with("limit", limit)
            }
        }
        .with("message", message)
    }
}

pub type ApiResult = Result<Response, ApiError>;

/// Read a JSON body through the size limit. No content type (or an empty body) reads as
/// `{}`, a content type other than JSON is 415, malformed JSON 400, too large 413, not
/// received within the body timeout 408.
pub async fn read_json(req: Request, limit: usize) -> Result<Value, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("").to_ascii_lowercase());
    if let Some(ct) = &content_type {
        let essence = ct.split(';').next().unwrap_or("").trim();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
            )
            .with("message", "send the body as application/json"));
        }
    }
    let timeout = req
        .extensions()
        .get::<BodyTimeout>()
        .map_or(BodyTimeout::DEFAULT, |t| t.0);
    let bytes = read_body(req.into_body(), limit, timeout).await?;
    if content_type.is_none() || bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    if !client_depth_ok(&bytes) {
        return Err(ApiError::bad_request("invalid_json").with(
            "message",
            format!("JSON may nest at most {MAX_CLIENT_DEPTH} levels deep"),
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_json").with("message", e.to_string()))
}

/// How long a request's body may take to arrive, set on each request by the server.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

impl BodyTimeout {
    pub const DEFAULT: Duration = Duration::from_secs(10);
}

/// Read a whole body into one buffer of at most `limit` bytes within `timeout`. Each frame
/// is copied out and dropped at once: a body dripped a byte (or a 1-byte chunk) at a time
/// costs its bytes, not a frame and a read buffer per byte.
async fn read_body(
    mut body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").with(
            "message",
            format!("request bodies are limited to {limit} bytes"),
        )
    };
    let announced = body.size_hint().lower();
    if announced > limit as u64 {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(announced as usize);
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| {
                ApiError::bad_request("invalid_body")
                    .with("message", "the request body could not be read")
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let needed = buf.len() + data.len();
            if needed > limit {
                return Err(too_large());
            }
            if needed > buf.capacity() {
                // Grow by doubling, but never past the limit.
                let target = (buf.capacity() * 2).max(needed).max(256).min(limit);
                buf.reserve_exact(target - buf.len());
            }
            buf.extend_from_slice(&data);
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout").with(
                    "message",
                    format!(
                        "the request body did not arrive within {} s",
                        timeout.as_secs_f64()
                    ),
                ),
            )
        }
    }
    Ok(buf)
}

/// Read a body that must be a JSON object.
pub async fn read_object(req: Request, limit: usize) -> Result<Map<String, Value>, ApiError> {
    match read_json(req, limit).await? {
        Value::Object(map) => Ok(map),
        _ => {
            Err(ApiError::bad_request("invalid_body")
                .with("message", "the body must be a JSON object"))
        }
    }
}

/// The name of the dashboard's session cookie (set by `POST /api/dashboard/login`). It
/// holds a session secret, never the token.
pub const SESSION_COOKIE: &str = "agentcom_session";

/// How a caller proves who it is.
#[derive(Debug, PartialEq)]
pub enum Credential<'a> {
    /// `Authorization: Bearer <token>` (exactly one such header, exact scheme).
    Bearer(&'a str),
    /// The dashboard's session cookie (HttpOnly, SameSite=Strict: the page never puts
    /// its token in a URL or in script-readable storage).
    Session(&'a str),
}

/// The caller's credential: the Bearer header, else the session cookie. Two
/// `Authorization` headers count as none.
pub fn credential(headers: &HeaderMap) -> Option<Credential<'_>> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => {
            let token = value.to_str().ok()?.strip_prefix("Bearer ")?.trim();
            (!token.is_empty()).then_some(Credential::Bearer(token))
        }
        (Some(_), Some(_)) => None,
        (None, _) => session_cookie(headers).map(Credential::Session),
    }
}

/// The session secret in the request's cookie, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
        .filter(|t| !t.is_empty())
}

/// A query-string parameter, percent-decoded.
pub fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// Decode `%XX` escapes (and `+` as space in query strings).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Resolve the caller from the Bearer header (A1).
pub fn caller(hub: &Hub, headers: &HeaderMap) -> Result<Principal, ApiError> {
    authenticate(hub, credential(headers))?.ok_or_else(ApiError::unauthorized_bearer)
}

fn authenticate(hub: &Hub, credential: Option<Credential>) -> Result<Option<Principal>, ApiError> {
    Ok(match credential {
        Some(Credential::Bearer(token)) => hub.authenticate(token)?,
        Some(Credential::Session(secret)) => hub.authenticate_session(secret)?,
        None => None,
    })
}

/// The caller a request's credential resolves to, if any: the Bearer header or session
/// cookie, else a `token` query parameter. For rate limits, before routing: an unknown
/// credential, or one that cannot be checked now, is `None` (the route answers for it).
pub fn known_caller(hub: &Hub, headers: &HeaderMap, uri: &http::Uri) -> Option<Principal> {
    match credential(headers) {
        Some(c) => authenticate(hub, Some(c)).ok().flatten(),
        None => hub.authenticate(&query_param(uri, "token")?).ok().flatten(),
    }
}

/// Resolve the caller from the Bearer header or a `token` query parameter (A2).
pub fn caller_or_token_param(
    hub: &Hub,
    headers: &HeaderMap,
    uri: &http::Uri,
) -> Result<Principal, ApiError> {
    match credential(headers) {
        Some(c) => authenticate(hub, Some(c))?,
        None => {
            let token = query_param(uri, "token").ok_or_else(ApiError::unauthorized)?;
            hub.authenticate(&token)?
        }
    }
    .ok_or_else(ApiError::unauthorized)
}

/// A caller that may message and use mailboxes and channels: an `agent` or `admin`
/// token (A1); a `viewer` token is 403.
pub fn messaging_caller(hub: &Hub, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let who = caller(hub, headers)?;
    if who.role == agentcom_core::auth::Role::Viewer {
        return Err(forbidden("a viewer token cannot send or read messages"));
    }
    Ok(who)
}

/// May `who` act as `agent_id` (its mailbox, its tokens)? Its own `agent` token or an
/// `admin` token: a `viewer` token only watches, whatever agent id it was minted for.
pub fn acts_for(who: &Principal, agent_id: &str) -> bool {
    who.role.is_admin()
        || (who.role == agentcom_core::auth::Role::Agent && who.agent_id == agent_id)
}

pub fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden").with("message", message)
}

/// An integer query parameter, validated: absent → `None`; not an integer in
/// `min..=max` → 400 `invalid_field` naming it (C4).
pub fn query_int(uri: &http::Uri, name: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
    match query_param(uri, name) {
        None => Ok(None),
        Some(raw) => raw
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request("invalid_field")
                    .with("field", name)
                    .with(
                        "message",
                        format!("{name} must be an integer from {min} to {max}"),
                    )
            }),
    }
}

/// A `limit` query parameter: at least 1, and one above `max` is taken as `max` (as the
/// original did: a client asking for more gets what the hub gives). Absent: `default`.
pub fn query_limit(uri: &http::Uri, max: usize, default: usize) -> Result<usize, ApiError> {
    let Some(raw) = query_param(uri, "limit") else {
        return Ok(default);
    };
    let raw = raw.trim();
    let digits = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
    match raw.parse::<u64>() {
        Ok(n) if n >= 1 => Ok((n.min(max as u64)) as usize),
        // Too many digits for a u64: far above the cap.
        Err(_) if digits => Ok(max),
        _ => Err(ApiError::bad_request("invalid_field")
            .with("field", "limit")
            .with(
                "message",
                format!("limit must be a positive integer (at most {max} are returned)"),
            )),
    }
}

/// An admin caller, or 401/403.
pub fn admin(hub: &Hub, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let who = caller(hub, headers)?;
    if who.role.is_admin() {
        Ok(who)
    } else {
        Err(ApiError::admin_only())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%23dev"), "#dev");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn bearer_needs_exact_scheme_and_the_cookie_holds_a_session() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc ".parse().unwrap());
        assert_eq!(credential(&h), Some(Credential::Bearer("abc")));
        h.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(credential(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        h.append(header::AUTHORIZATION, "Bearer def".parse().unwrap());
        assert_eq!(credential(&h), None);
        let mut c = HeaderMap::new();
        c.insert(
            header::COOKIE,
            "theme=dark; agentcom_session=s3cr3t".parse().unwrap(),
        );
        assert_eq!(credential(&c), Some(Credential::Session("s3cr3t")));
        c.insert(header::COOKIE, "agentcom_token=tok".parse().unwrap());
        assert_eq!(credential(&c), None, "the old token cookie is not read");
    }
}
