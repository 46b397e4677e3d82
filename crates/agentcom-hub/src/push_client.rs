//! Sends Web Push requests: one HTTP/1.1 POST per message over TLS (rustls with the
//! Mozilla root store, so no system certificates are needed). Plain HTTP is used only for
//! `http://` endpoints, which subscriptions allow on loopback with test hooks on.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The longest a push may take, connect to answer.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct PushClient {
    tls: tokio_rustls::TlsConnector,
}

impl Default for PushClient {
    fn default() -> Self {
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        PushClient {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }
}

impl PushClient {
    /// POST `body` to `endpoint` with `headers`; the push service's status code.
    pub async fn post(
        &self,
        endpoint: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<u16, String> {
        tokio::time::timeout(PUSH_TIMEOUT, self.post_now(endpoint, headers, body))
            .await
            .map_err(|_| format!("no answer within {} s", PUSH_TIMEOUT.as_secs()))?
    }

    async fn post_now(
        &self,
        endpoint: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<u16, String> {
        let uri: http::Uri = endpoint.parse().map_err(|e| format!("bad endpoint: {e}"))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().ok_or("endpoint without a host")?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let mut request = hyper::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                hyper::header::HOST,
                uri.authority().map_or("", |a| a.as_str()),
            )
            .header(hyper::header::CONTENT_LENGTH, body.len());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("bad request: {e}"))?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect {host}:{port}: {e}"))?;
        if https {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("bad host {host}: {e}"))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host}: {e}"))?;
            send(tls, request).await
        } else {
            send(tcp, request).await
        }
    }
}

async fn send<S>(io: S, request: hyper::Request<Full<Bytes>>) -> Result<u16, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP request: {e}"))?;
    let status = response.status().as_u16();
    // Read (and drop) a bounded answer so that the connection closes cleanly.
    let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
        .collect()
        .await;
    Ok(status)
}
