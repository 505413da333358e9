//! Presigned S3 URLs (SigV4 query authentication), made here rather than by the SDK.
//!
//! Two reasons. The SDK's presigner leaves `content-length` out of the signed headers, and a chunk
//! upload URL must sign the exact byte length (and content type), so that it cannot be used to
//! write anything but that chunk: storage then refuses another length with SignatureDoesNotMatch.
//! And a presign is a few HMACs with no I/O, so a replica signs thousands per second on one core
//! (the SDK builds a whole request pipeline for each).
//!
//! URLs are made for the *public* endpoint, the one browsers reach, which may differ from the one
//! the API itself talks to.

use std::fmt::Write as _;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use ring::{digest, hmac};

/// Everything but SigV4's unreserved characters (`A-Z a-z 0-9 - . _ ~`) is percent-encoded.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Signs URLs for one bucket at one endpoint.
#[derive(Clone, Debug)]
pub struct Presigner {
    scheme: String,
    /// `host[:port]` as the `Host` header will carry it.
    host: String,
    /// Path before the key: `/{bucket}` (path style) or empty (virtual-hosted).
    base_path: String,
    region: String,
    access_key: String,
    secret_key: String,
}

/// A presigned request: the URL and the headers the client must send exactly as signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presigned {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// A bad endpoint, said at startup.
#[derive(Debug, thiserror::Error)]
#[error("storage endpoint {0:?} is not an http(s) URL with a host")]
pub struct BadEndpoint(String);

impl Presigner {
    pub fn new(
        endpoint: &str,
        bucket: &str,
        path_style: bool,
        region: &str,
        access_key: &str,
        secret_key: &str,
    ) -> Result<Presigner, BadEndpoint> {
        let (scheme, rest) = endpoint
            .split_once("://")
            .filter(|(s, _)| *s == "http" || *s == "https")
            .ok_or_else(|| BadEndpoint(endpoint.into()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(BadEndpoint(endpoint.into()));
        }
        // The Host header leaves out the scheme's default port.
        let host = match (scheme, authority.rsplit_once(':')) {
            ("http", Some((h, "80"))) | ("https", Some((h, "443"))) => h.to_string(),
            _ => authority.to_string(),
        };
        let (host, base_path) = if path_style {
            (host, format!("{path}/{}", encode(bucket)))
        } else {
            (format!("{bucket}.{host}"), path.to_string())
        };
        Ok(Presigner {
            scheme: scheme.to_string(),
            host,
            base_path,
            region: region.to_string(),
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
        })
    }

    /// A PUT of exactly `length` bytes of `content_type` to `key`, valid for `ttl` from `now`.
    pub fn put(
        &self,
        key: &str,
        content_type: &str,
        length: u64,
        ttl: Duration,
        now: jiff::Timestamp,
    ) -> Presigned {
        let headers = vec![
            ("content-length".to_string(), length.to_string()),
            ("content-type".to_string(), content_type.to_string()),
        ];
        self.sign("PUT", key, &headers, &[], ttl, now)
    }

    /// A GET of `key`, valid for `ttl` from `now`, optionally asking storage to answer with a
    /// `Content-Disposition` (a download file name).
    pub fn get(
        &self,
        key: &str,
        disposition: Option<&str>,
        ttl: Duration,
        now: jiff::Timestamp,
    ) -> Presigned {
        let extra: Vec<(&str, &str)> = disposition
            .map(|d| vec![("response-content-disposition", d)])
            .unwrap_or_default();
        self.sign("GET", key, &[], &extra, ttl, now)
    }

    fn sign(
        &self,
        method: &str,
        key: &str,
        headers: &[(String, String)],
        extra_query: &[(&str, &str)],
        ttl: Duration,
        now: jiff::Timestamp,
    ) -> Presigned {
        let datetime = now.strftime("%Y%m%dT%H%M%SZ").to_string();
        let date = &datetime[..8];
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let path = format!(
            "{}/{}",
            self.base_path,
            key.split('/').map(encode).collect::<Vec<_>>().join("/")
        );

        // Signed headers: the caller's plus host, lowercase, sorted.
        let mut signed: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        signed.push(("host".into(), self.host.clone()));
        signed.sort();
        let signed_names = signed
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");

        let credential = format!("{}/{scope}", self.access_key);
        let expires = ttl.as_secs().clamp(1, 604_800).to_string();
        let mut query: Vec<(String, String)> = vec![
            ("X-Amz-Algorithm".into(), "AWS4-HMAC-SHA256".into()),
            ("X-Amz-Credential".into(), credential),
            ("X-Amz-Date".into(), datetime.clone()),
            ("X-Amz-Expires".into(), expires),
            ("X-Amz-SignedHeaders".into(), signed_names.clone()),
        ];
        query.extend(
            extra_query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let mut query: Vec<(String, String)> = query
            .into_iter()
            .map(|(k, v)| (encode(&k), encode(&v)))
            .collect();
        query.sort();
        let canonical_query = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");

        let mut canonical = String::with_capacity(512);
        let _ = write!(canonical, "{method}\n{path}\n{canonical_query}\n");
        for (k, v) in &signed {
            let _ = writeln!(canonical, "{k}:{v}");
        }
        let _ = write!(canonical, "\n{signed_names}\nUNSIGNED-PAYLOAD");

        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{datetime}\n{scope}\n{}",
            hex::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
        );
        let signing_key = [date, &self.region, "s3", "aws4_request"].iter().fold(
            hmac::Key::new(
                hmac::HMAC_SHA256,
                format!("AWS4{}", self.secret_key).as_bytes(),
            ),
            |key, part| {
                hmac::Key::new(
                    hmac::HMAC_SHA256,
                    hmac::sign(&key, part.as_bytes()).as_ref(),
                )
            },
        );
        let signature = hex::encode(hmac::sign(&signing_key, string_to_sign.as_bytes()));

        Presigned {
            url: format!(
                "{}://{}{path}?{canonical_query}&X-Amz-Signature={signature}",
                self.scheme, self.host
            ),
            headers: headers
                .iter()
                .filter(|(k, _)| k != "content-length")
                .cloned()
                .collect(),
        }
    }
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp")
    }

    /// The example of AWS's "Authenticating Requests: Using Query Parameters" page, which gives
    /// its signature.
    #[test]
    fn matches_the_documented_aws_example() {
        let p = Presigner::new(
            "https://s3.amazonaws.com",
            "examplebucket",
            false,
            "us-east-1",
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        )
        .expect("endpoint");
        let signed = p.get(
            "test.txt",
            None,
            Duration::from_secs(86400),
            at("2013-05-24T00:00:00Z"),
        );
        assert!(
            signed.url.ends_with(
                "X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
            ),
            "{}",
            signed.url
        );
        assert!(
            signed
                .url
                .starts_with("https://examplebucket.s3.amazonaws.com/test.txt?")
        );
    }

    #[test]
    fn an_upload_url_signs_length_and_type_and_names_them() {
        let p = Presigner::new("http://127.0.0.1:9000/", "b", true, "auto", "ak", "sk")
            .expect("endpoint");
        let signed = p.put(
            "riverside/chunks/r/rec/alice/00000001.webm",
            "video/webm;codecs=vp8,opus",
            1234,
            Duration::from_secs(300),
            at("2026-01-01T00:00:00Z"),
        );
        assert!(
            signed
                .url
                .starts_with("http://127.0.0.1:9000/b/riverside/chunks/r/rec/alice/00000001.webm?")
        );
        assert!(
            signed
                .url
                .contains("X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost"),
            "{}",
            signed.url
        );
        assert!(signed.url.contains("X-Amz-Expires=300"));
        assert_eq!(
            signed.headers,
            [(
                "content-type".to_string(),
                "video/webm;codecs=vp8,opus".to_string()
            )]
        );
    }

    #[test]
    fn bad_endpoints_are_refused() {
        for bad in ["127.0.0.1:9000", "ftp://x", "http://"] {
            assert!(
                Presigner::new(bad, "b", true, "auto", "a", "s").is_err(),
                "{bad}"
            );
        }
    }
}
