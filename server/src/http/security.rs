//! What keeps other web pages, open in the same browser, from using this server: a researcher
//! runs it on their own machine and browses the web beside it. All of it applies with or without
//! `--auth-token`.
//!
//! - **`Host`** must name this server (the bind address, any loopback address, `localhost`, or a
//!   `--allowed-host`), as Jupyter checks it: otherwise a page on a domain that the attacker
//!   re-points at 127.0.0.1 (DNS rebinding) could read and drive the API as a same-origin page.
//! - **Mutating requests** whose `Origin` is not this server's own, or that a browser marks
//!   `Sec-Fetch-Site: cross-site` or `same-site`, are refused. Clients other than browsers send
//!   neither header.
//! - **API bodies** must be `application/json` (`multipart/form-data` for uploads): a page can
//!   send other sites only form encodings and `text/plain` without asking first (CORS), and this
//!   server answers no such question. The routes that read a body check it ([`json_problem`],
//!   [`multipart_problem`]), so a method a route does not take still answers 405.
//! - **Page forms** carry a token that must equal the `goodhart_csrf` cookie (double submit):
//!   a page elsewhere can neither read the cookie nor set the field to match it. A signed-in
//!   browser's forms carry its session's token instead ([`super::auth::SessionCsrf`]), which
//!   only the holder of the session's HttpOnly cookie can know.

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::Error;
use super::AppState;

/// The cookie that holds a browser's form token.
pub const CSRF_COOKIE: &str = "goodhart_csrf";
/// The form field that repeats it.
pub const CSRF_FIELD: &str = "csrf_token";

/// `Host`, and `Origin` and `Sec-Fetch-Site` of mutating requests; see the module.
pub async fn same_origin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let settings = &state.settings;
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(host) = host {
        if !host_allowed(host, settings.bind, &settings.allowed_hosts) {
            return Error::Forbidden(format!(
                "`Host: {host}` is not a name of this server; start it with `--allowed-host {}` to serve that name",
                strip_port(host)
            ))
            .into_response();
        }
    }
    if is_mutating(request.method()) {
        if let Some(problem) = cross_site(headers, host) {
            return Error::Forbidden(format!(
                "{problem}: a page may change this server's state only from this server's own pages"
            ))
            .into_response();
        }
    }
    next.run(request).await
}

fn is_mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// `host` (a `Host` header, port optional) names this server when it is an IP address this
/// server may be reached at, `localhost`, or one of `allowed`. An entry `.example.org` allows
/// its subdomains too, and `*` any name.
pub fn host_allowed(host: &str, bind: SocketAddr, allowed: &[String]) -> bool {
    let name = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
    let literal = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(&name);
    // No page can re-point an address at this server: only names can be rebound.
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return ip.is_loopback() || ip == bind.ip() || bind.ip().is_unspecified();
    }
    name == "localhost"
        || allowed.iter().any(|entry| {
            let entry = entry.trim().trim_end_matches('.').to_ascii_lowercase();
            entry == "*"
                || entry == name
                || entry.strip_prefix('.').is_some_and(|domain| name == domain || name.ends_with(&format!(".{domain}")))
        })
}

/// `example.org:8080` → `example.org`; `[::1]:8080` → `[::1]`.
fn strip_port(host: &str) -> &str {
    let host = host.trim();
    if let Some(end) = host.find(']') {
        return &host[..=end];
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Why a mutating request comes from another site, if it does.
fn cross_site(headers: &HeaderMap, host: Option<&str>) -> Option<String> {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
    if let Some(site) = fetch_site.filter(|s| s != "same-origin" && s != "none") {
        return Some(format!("the browser marks this request `Sec-Fetch-Site: {site}`"));
    }
    let origin = headers.get(header::ORIGIN)?;
    let Some(origin) = origin.to_str().ok().filter(|o| *o != "null") else {
        return Some("a request with `Origin: null` (a sandboxed page or a file)".to_string());
    };
    let same = host.is_some_and(|host| {
        origin.split_once("://").is_some_and(|(scheme, authority)| {
            let default_port = if scheme.eq_ignore_ascii_case("https") { "443" } else { "80" };
            let with_port = |a: &str| {
                let a = a.trim_end_matches('/').to_ascii_lowercase();
                if strip_port(&a).len() == a.len() {
                    format!("{a}:{default_port}")
                } else {
                    a
                }
            };
            with_port(authority) == with_port(host)
        })
    });
    (!same).then(|| format!("`Origin: {origin}` is not this server's origin"))
}

/// Why a request's body is not JSON, if it is not: its `Content-Type` is another one, or it
/// has a body but no `Content-Type`. A request without a body needs none.
pub fn json_problem(headers: &HeaderMap) -> Option<String> {
    let sent = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("(not text)"));
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|len| len.trim() != "0");
    match sent.map(essence).as_deref() {
        None if !has_body => None,
        Some(json) if json == "application/json" || json.ends_with("+json") => None,
        _ => Some(format!(
            "the API reads JSON bodies only: send `Content-Type: application/json`, not {}",
            described(sent)
        )),
    }
}

/// Why an upload is not `multipart/form-data`, if it is not.
pub fn multipart_problem(headers: &HeaderMap) -> Option<String> {
    let sent = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("(not text)"));
    (sent.map(essence).as_deref() != Some("multipart/form-data"))
        .then(|| format!("an upload is `multipart/form-data` (a `file` field), not {}", described(sent)))
}

/// `type/subtype` of a `Content-Type`, without its parameters.
fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

fn described(content_type: Option<&str>) -> String {
    content_type.map_or("a body without a Content-Type".to_string(), |s| format!("`{s}`"))
}

/// This browser's form token, for a page to put in its forms (`<input name="csrf_token">`).
#[derive(Debug, Clone, Default)]
pub struct CsrfToken(pub String);

impl<S: Send + Sync> FromRequestParts<S> for CsrfToken {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Self>().cloned().unwrap_or_default())
    }
}

/// Page forms (every `POST` outside `/api/`) must repeat the browser's `goodhart_csrf` cookie in
/// their `csrf_token` field, or a signed-in browser's session token. Pages get the token as
/// [`CsrfToken`]; a browser with neither gets a fresh cookie with the page.
pub async fn csrf(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let page = !path.starts_with("/api/") && !path.starts_with("/static/");
    let session = request.extensions().get::<super::auth::SessionCsrf>().map(|s| s.0.clone());
    let cookie = session.or_else(|| cookie_token(request.headers()));
    if page && request.method() == Method::POST {
        let (parts, body) = request.into_parts();
        let limit = state.settings.max_body_bytes;
        let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
            return super::pages::error_page(Error::TooLarge { limit, flag: "--max-body-bytes" }.public());
        };
        let sent = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
            .ok()
            .and_then(|form| form.into_iter().rev().find(|(k, _)| k == CSRF_FIELD).map(|(_, v)| v));
        let matches = matches!((&cookie, &sent), (Some(c), Some(s)) if constant_time_eq(c.as_bytes(), s.as_bytes()));
        if !matches {
            let refusal = Error::Forbidden(
                "this form came without its security token (the page is stale, or this browser keeps no \
                 cookies for the server): reload the page and submit the form again"
                    .to_string(),
            );
            return super::pages::error_page(refusal.public());
        }
        request = Request::from_parts(parts, Body::from(bytes));
    }
    let (token, fresh) = match cookie {
        Some(token) => (token, false),
        None => (format!("{:032x}", rand::random::<u128>()), true),
    };
    request.extensions_mut().insert(CsrfToken(token.clone()));
    let mut response = next.run(request).await;
    if page && fresh {
        if let Ok(cookie) = HeaderValue::from_str(&format!("{CSRF_COOKIE}={token}; Path=/; SameSite=Lax; HttpOnly")) {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
    }
    response
}

/// The `goodhart_csrf` cookie's token, if it has the form this server writes.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    cookie(headers, CSRF_COOKIE, |value| value.len() == 32 && value.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The first value of cookie `name` that `accept` takes, if the request has one.
pub(super) fn cookie(headers: &HeaderMap, name: &str, accept: impl Fn(&str) -> bool) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, value)| *n == name && accept(value))
        .map(|(_, value)| value.to_string())
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(addr: &str) -> SocketAddr {
        addr.parse().unwrap()
    }

    #[test]
    fn hosts_are_this_servers_addresses_localhost_or_allowed_names() {
        let local = bind("127.0.0.1:8080");
        for host in ["127.0.0.1:8080", "127.0.0.1", "localhost:8080", "LOCALHOST", "[::1]:8080", "localhost."] {
            assert!(host_allowed(host, local, &[]), "{host}");
        }
        for host in ["evil.example:8080", "evil.example", "localhost.evil.example", "192.168.1.5:8080", ""] {
            assert!(!host_allowed(host, local, &[]), "{host}");
        }
        let allowed = vec!["lab.example.org".to_string(), ".corp.example".to_string()];
        assert!(host_allowed("Lab.Example.org:443", local, &allowed));
        assert!(host_allowed("gpu1.corp.example", local, &allowed));
        assert!(!host_allowed("evilcorp.example", local, &allowed));
        assert!(host_allowed("anything.example", local, &["*".to_string()]));
        // Bound to every interface: any address of the machine, still no foreign names.
        assert!(host_allowed("192.168.1.5:8080", bind("0.0.0.0:8080"), &[]));
        assert!(!host_allowed("evil.example", bind("0.0.0.0:8080"), &[]));
        assert!(host_allowed("10.0.0.2:8080", bind("10.0.0.2:8080"), &[]));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (header::HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn only_requests_from_this_servers_own_origin_may_change_state() {
        let host = Some("127.0.0.1:8080");
        assert_eq!(cross_site(&headers(&[]), host), None, "curl and scripts send no Origin");
        assert_eq!(cross_site(&headers(&[("origin", "http://127.0.0.1:8080")]), host), None);
        assert_eq!(cross_site(&headers(&[("sec-fetch-site", "same-origin")]), host), None);
        assert_eq!(cross_site(&headers(&[("origin", "http://localhost")]), Some("localhost:80")), None);
        for refused in [
            headers(&[("origin", "http://evil.example")]),
            headers(&[("origin", "http://127.0.0.1:9999")]),
            headers(&[("origin", "null")]),
            headers(&[("sec-fetch-site", "cross-site")]),
            headers(&[("sec-fetch-site", "same-site"), ("origin", "http://127.0.0.1:8080")]),
        ] {
            assert!(cross_site(&refused, host).is_some(), "{refused:?}");
        }
    }

    #[test]
    fn api_bodies_must_be_json_and_uploads_multipart() {
        let json = headers(&[("content-type", "application/json; charset=utf-8"), ("content-length", "2")]);
        assert_eq!(json_problem(&json), None);
        assert_eq!(json_problem(&headers(&[("content-type", "application/merge-patch+json")])), None);
        let text = headers(&[("content-type", "text/plain"), ("content-length", "2")]);
        assert!(json_problem(&text).unwrap().contains("text/plain"));
        assert!(json_problem(&headers(&[("content-type", "application/x-www-form-urlencoded")])).is_some());
        assert!(json_problem(&headers(&[("content-length", "2")])).is_some(), "a body without a type");
        assert_eq!(json_problem(&headers(&[("content-length", "0")])), None, "no body, no type");
        let multipart = headers(&[("content-type", "multipart/form-data; boundary=x")]);
        assert_eq!(multipart_problem(&multipart), None);
        assert!(json_problem(&multipart).is_some());
        assert!(multipart_problem(&json).is_some());
        assert!(multipart_problem(&headers(&[])).is_some());
    }

    #[test]
    fn the_csrf_cookie_is_read_only_in_the_form_this_server_writes() {
        let token = "0123456789abcdef0123456789abcdef";
        let h = |v: &'static str| headers(&[("cookie", v)]);
        assert_eq!(cookie_token(&h("a=1; goodhart_csrf=0123456789abcdef0123456789abcdef")).as_deref(), Some(token));
        assert_eq!(cookie_token(&h("goodhart_csrf=short")), None);
        assert_eq!(cookie_token(&h("other=0123456789abcdef0123456789abcdef")), None);
    }

    #[test]
    fn tokens_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
