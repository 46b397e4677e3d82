//! `GET /api/openapi.json`: the API description (`docs/openapi.yaml`, turned into JSON by
//! `build.rs`), open to anyone and cacheable: it changes only with the binary.

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::Full;

use crate::api::{Request, Response};

/// The description as served.
pub const DOCUMENT: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// Its entity tag (a hash of [`DOCUMENT`], quoted).
const ETAG: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.etag"));

/// The document, or `304 Not Modified` when the client already holds this version.
pub fn document(req: &Request) -> Response {
    let fresh = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == "*" || tag.trim() == ETAG);
    let mut res = if fresh {
        let mut res = hyper::Response::new(Full::new(Bytes::new()));
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        res
    } else {
        let mut res = hyper::Response::new(Full::new(Bytes::from_static(DOCUMENT.as_bytes())));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        res
    };
    let h = res.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(header::ETAG, HeaderValue::from_static(ETAG));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_json_and_openapi_3_1() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("valid JSON");
        assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3.1."));
        assert!(ETAG.starts_with('"') && ETAG.ends_with('"') && ETAG.len() == 18);
    }
}
