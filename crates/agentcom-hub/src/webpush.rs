//! Web Push messages, as pure functions: subscriptions as browsers hand them over, the
//! payload encryption of RFC 8291 (`aes128gcm`, RFC 8188) and the VAPID authorization of
//! RFC 8292. Sending them is the notifier's business (`push_client`).

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hkdf::Hkdf;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use serde_json::{json, Value};
use sha2::Sha256;

/// Record size announced in the header; every push fits in one record.
const RECORD_SIZE: u32 = 4096;
/// Largest plaintext sent: push services accept 4096 bytes of encrypted body.
pub const MAX_PAYLOAD: usize = 3000;

/// A browser's push subscription: where to send, and the keys to encrypt for.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub endpoint: String,
    /// The browser's P-256 public key (`keys.p256dh`).
    pub p256dh: PublicKey,
    /// The browser's 16-byte authentication secret (`keys.auth`).
    pub auth: [u8; 16],
}

impl Subscription {
    /// Read `{"endpoint": …, "keys": {"p256dh": …, "auth": …}}` (other fields, such as
    /// `expirationTime`, are ignored). Endpoints must be `https`; with `allow_http_loopback`
    /// (test hooks) a plain-`http` endpoint on the loopback interface is accepted too.
    pub fn from_json(v: &Value, allow_http_loopback: bool) -> Result<Subscription, String> {
        let endpoint = v["endpoint"].as_str().ok_or("endpoint must be a string")?;
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|_| "endpoint must be an absolute URL")?;
        let host = uri.host().ok_or("endpoint must be an absolute URL")?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if allow_http_loopback && is_loopback(host) => {}
            _ => return Err("endpoint must be an https URL".into()),
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err("endpoint must not carry credentials".into());
        }
        let key = |name: &str| -> Result<Vec<u8>, String> {
            let text = v["keys"][name]
                .as_str()
                .ok_or(format!("keys.{name} must be a string"))?;
            URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .map_err(|_| format!("keys.{name} must be base64url"))
        };
        let p256dh = PublicKey::from_sec1_bytes(&key("p256dh")?)
            .map_err(|_| "keys.p256dh must be a P-256 public key")?;
        let auth = key("auth")?
            .try_into()
            .map_err(|_| "keys.auth must be 16 bytes")?;
        Ok(Subscription {
            endpoint: endpoint.to_string(),
            p256dh,
            auth,
        })
    }

    /// The stored form: only what sending needs.
    pub fn to_json(&self) -> Value {
        json!({
            "endpoint": self.endpoint,
            "keys": {
                "p256dh": URL_SAFE_NO_PAD.encode(self.p256dh.to_encoded_point(false).as_bytes()),
                "auth": URL_SAFE_NO_PAD.encode(self.auth),
            }
        })
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A fresh P-256 secret from the operating system's random source.
pub fn random_secret() -> SecretKey {
    loop {
        let bytes = crate::random_bytes::<32>();
        // A value at or above the group order (probability ~2^-32) is simply redrawn.
        if let Ok(secret) = SecretKey::from_slice(&bytes) {
            return secret;
        }
    }
}

/// Encrypt `payload` for the subscription (RFC 8291) with a fresh key pair and salt.
pub fn encrypt(payload: &[u8], to: &Subscription) -> Vec<u8> {
    let salt = crate::random_bytes::<16>();
    encrypt_with(payload, &to.p256dh, &to.auth, &random_secret(), &salt)
}

/// RFC 8291 §3–4 with the sender's key pair and salt given: the `aes128gcm` body
/// (header with salt, record size and sender key, then one padded, encrypted record).
pub fn encrypt_with(
    payload: &[u8],
    ua_public: &PublicKey,
    auth: &[u8; 16],
    as_secret: &SecretKey,
    salt: &[u8; 16],
) -> Vec<u8> {
    let ua_point = ua_public.to_encoded_point(false);
    let as_point = as_secret.public_key().to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua_public.as_affine());

    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(ua_point.as_bytes());
    key_info.extend_from_slice(as_point.as_bytes());
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .expect("32 bytes is a valid HKDF length");

    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .expect("16 bytes is a valid HKDF length");
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .expect("12 bytes is a valid HKDF length");

    let mut record = payload.to_vec();
    record.push(2); // the last (and only) record's padding delimiter
    let sealed = Aes128Gcm::new_from_slice(&cek)
        .expect("16-byte key")
        .encrypt(Nonce::from_slice(&nonce), record.as_slice())
        .expect("AES-GCM encryption of a small record");

    let mut body = Vec::with_capacity(16 + 4 + 1 + 65 + sealed.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(as_point.as_bytes().len() as u8);
    body.extend_from_slice(as_point.as_bytes());
    body.extend_from_slice(&sealed);
    body
}

/// The origin of an endpoint (`scheme://host[:port]`), the JWT's audience.
pub fn audience(endpoint: &str) -> Option<String> {
    let uri: http::Uri = endpoint.parse().ok()?;
    Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?))
}

/// The `Authorization` header of RFC 8292: `vapid t=<ES256 JWT>, k=<public key>`, the
/// token valid for 12 hours from `now_s` (seconds since the epoch).
pub fn vapid_authorization(
    key: &SigningKey,
    endpoint: &str,
    subject: &str,
    now_s: u64,
) -> Option<String> {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
    let claims = json!({"aud": audience(endpoint)?, "exp": now_s + 12 * 3600, "sub": subject});
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{claims}");
    let signature: Signature = key.sign(signing_input.as_bytes());
    let public = key.verifying_key().to_encoded_point(false);
    Some(format!(
        "vapid t={signing_input}.{}, k={}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes()),
        URL_SAFE_NO_PAD.encode(public.as_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::VerifyingKey;

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    /// RFC 8291 Appendix A.
    #[test]
    fn encryption_matches_the_rfc_8291_example() {
        let as_secret =
            SecretKey::from_slice(&b64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw")).unwrap();
        let ua_public = PublicKey::from_sec1_bytes(&b64(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        ))
        .unwrap();
        let auth: [u8; 16] = b64("BTBZMqHH6r4Tts7J_aSIgg").try_into().unwrap();
        let salt: [u8; 16] = b64("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap();
        let body = encrypt_with(
            b"When I grow up, I want to be a watermelon",
            &ua_public,
            &auth,
            &as_secret,
            &salt,
        );
        assert_eq!(
            URL_SAFE_NO_PAD.encode(body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }

    #[test]
    fn vapid_token_is_a_verifiable_es256_jwt_for_the_endpoint_origin() {
        let key = SigningKey::from(random_secret());
        let auth = vapid_authorization(
            &key,
            "https://push.example.net:8443/send/abc?x=1",
            "mailto:ops@example.org",
            1_000,
        )
        .unwrap();
        let (t, k) = auth
            .strip_prefix("vapid t=")
            .unwrap()
            .split_once(", k=")
            .unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: Value = serde_json::from_slice(&b64(parts[1])).unwrap();
        assert_eq!(
            claims,
            json!({"aud": "https://push.example.net:8443", "exp": 1_000 + 43_200, "sub": "mailto:ops@example.org"})
        );
        let verifying = VerifyingKey::from_sec1_bytes(&b64(k)).unwrap();
        assert_eq!(&verifying, key.verifying_key());
        let signature = Signature::from_slice(&b64(parts[2])).unwrap();
        let input = format!("{}.{}", parts[0], parts[1]);
        verifying.verify(input.as_bytes(), &signature).unwrap();
    }

    fn browser_keys() -> Value {
        let secret = random_secret();
        json!({
            "p256dh": URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes()),
            "auth": URL_SAFE_NO_PAD.encode([7u8; 16]),
        })
    }

    #[test]
    fn subscriptions_are_validated() {
        let keys = browser_keys();
        let ok =
            json!({"endpoint": "https://push.example/abc", "expirationTime": null, "keys": keys});
        let sub = Subscription::from_json(&ok, false).unwrap();
        assert_eq!(
            sub.to_json(),
            json!({"endpoint": "https://push.example/abc", "keys": keys})
        );
        let bad = |v: Value, allow: bool| Subscription::from_json(&v, allow).unwrap_err();
        assert!(bad(json!({"keys": keys}), false).contains("endpoint"));
        assert!(bad(json!({"endpoint": "/relative", "keys": keys}), false).contains("URL"));
        assert!(bad(
            json!({"endpoint": "http://push.example/a", "keys": keys}),
            true
        )
        .contains("https"));
        assert!(bad(
            json!({"endpoint": "http://127.0.0.1:9/a", "keys": keys}),
            false
        )
        .contains("https"));
        assert!(Subscription::from_json(
            &json!({"endpoint": "http://127.0.0.1:9/a", "keys": keys}),
            true
        )
        .is_ok());
        assert!(bad(
            json!({"endpoint": "https://u:p@push.example/a", "keys": keys}),
            false
        )
        .contains("credentials"));
        let mut wrong = keys.clone();
        wrong["p256dh"] = json!("x");
        assert!(bad(
            json!({"endpoint": "https://p.example/", "keys": wrong}),
            false
        )
        .contains("p256dh"));
        let mut wrong = keys.clone();
        wrong["auth"] = json!(URL_SAFE_NO_PAD.encode([1u8; 8]));
        assert!(bad(
            json!({"endpoint": "https://p.example/", "keys": wrong}),
            false
        )
        .contains("16 bytes"));
    }
}
