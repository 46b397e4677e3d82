//! The API description (`docs/openapi.yaml`, served at `GET /api/openapi.json`) and the
//! route table agree: every route is described, every description has a route, and the
//! running hub answers exactly the described paths and methods.

mod common;

use std::collections::BTreeSet;

use common::{request_with, TestHub};
use serde_json::Value;

/// The methods an OpenAPI path item may describe.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// `(path, METHOD)` of every operation in the document.
fn described(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths is an object");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let item = item.as_object().expect("a path item is an object");
            METHODS
                .iter()
                .filter(|m| item.contains_key(**m))
                .map(move |m| (path.clone(), m.to_ascii_uppercase()))
        })
        .collect()
}

async fn served_document(hub: &TestHub) -> Value {
    let r = hub.get("/api/openapi.json", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/json; charset=utf-8")
    );
    serde_json::from_slice(&r.body).expect("the description is valid JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_is_served_as_openapi_3_1_json_and_cacheable() {
    let hub = TestHub::start().await;
    let doc = served_document(&hub).await;
    let version = doc["openapi"].as_str().expect("openapi is a string");
    assert!(version.starts_with("3.1."), "openapi {version}");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let r = hub.get("/api/openapi.json", None).await;
    assert_eq!(
        r.headers.get("cache-control").map(|v| v.to_str().unwrap()),
        Some("public, max-age=3600")
    );
    let etag = r.headers.get("etag").expect("an ETag").to_str().unwrap();
    let again = request_with(
        &hub.addr,
        "GET",
        "/api/openapi.json",
        &[("if-none-match", etag)],
        None,
    )
    .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    let stale = request_with(
        &hub.addr,
        "GET",
        "/api/openapi.json",
        &[("if-none-match", "\"0000000000000000\"")],
        None,
    )
    .await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_described_and_every_description_has_a_route() {
    let hub = TestHub::start().await;
    let doc = served_document(&hub).await;
    let documented = described(&doc);
    let routes: BTreeSet<(String, String)> = agentcom_http::route_table()
        .into_iter()
        .map(|(path, method)| (path.to_string(), method.to_string()))
        .collect();
    let undescribed: Vec<_> = routes.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routes).collect();
    assert!(
        undescribed.is_empty() && unrouted.is_empty(),
        "routes without a description in docs/openapi.yaml: {undescribed:?}; \
         descriptions without a route in routes.rs: {unrouted:?}"
    );
}

/// Each `{param}` of a path is declared as a path parameter of each of its operations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_parameter_is_declared() {
    let hub = TestHub::start().await;
    let doc = served_document(&hub).await;
    let resolve = |p: &Value| -> Value {
        match p["$ref"].as_str() {
            Some(r) => {
                let pointer = r.strip_prefix('#').expect("a local $ref");
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("{r} resolves"))
                    .clone()
            }
            None => p.clone(),
        }
    };
    for (path, method) in described(&doc) {
        let op = &doc["paths"][&path][method.to_ascii_lowercase()];
        let declared: BTreeSet<String> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(resolve)
            .filter(|p| p["in"] == "path")
            .map(|p| p["name"].as_str().expect("a parameter name").to_string())
            .collect();
        let in_template: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_string)
            .collect();
        assert_eq!(declared, in_template, "{method} {path}");
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path} has no responses"
        );
    }
}

/// The running hub answers the described methods of each described path, and nothing
/// else there: a method it does not describe gets the router's own
/// `404 {"error":"not_found"}`. Requests carry no credential, so none has an effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_answers_exactly_the_described_methods() {
    let hub = TestHub::start().await;
    let doc = served_document(&hub).await;
    let documented = described(&doc);
    let paths: BTreeSet<&String> = documented.iter().map(|(p, _)| p).collect();
    let routing_404 = serde_json::json!({"error": "not_found"});
    let mut wrong = Vec::new();
    for path in paths {
        let concrete: String = path
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let r = hub.request(method, &concrete, None, None).await;
            let routed = !(r.status == 404 && r.json == routing_404);
            let expected = documented.contains(&(path.clone(), method.to_string()));
            if routed != expected {
                wrong.push(format!("{method} {concrete} → {} {}", r.status, r.json));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "answers that disagree with the description: {wrong:?}"
    );
}
