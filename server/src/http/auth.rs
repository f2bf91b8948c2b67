//! Who is asking: sign-in for the pages, bearer tokens for the API.
//!
//! A server started with `--auth-token`, or whose database has a user (`goodhart user add`),
//! asks every request who it comes from, except the sign-in page, `/static/` and
//! `/api/openapi.json`:
//!
//! - **`Authorization: Bearer <token>`**: the `--auth-token`, or one of a user's API tokens
//!   (`goodhart user token NAME`). A bearer that is neither answers 401.
//! - **A session cookie** (`goodhart_session`), from signing in at `/login` with a user's name
//!   and password, or with an empty name (or `admin`) and the `--auth-token` as the password.
//!   The cookie is `HttpOnly; SameSite=Strict; Path=/`, plus `Secure` when the request came
//!   through a TLS proxy that says so (`X-Forwarded-Proto: https`), or always with
//!   `--secure-cookies`. A session lasts 30 days from sign-in (fixed, not sliding); signing out
//!   ends it. Its page forms carry a token derived from the session id ([`security::csrf`]
//!   checks it).
//!
//! Without either, a page answers a redirect to `/login?next=<where it was going>`, and the API
//! 401 with what to send. A server with neither a token nor users signs nobody in.

use askama::Template;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::error::Error;
use super::pages::{page, PageResult};
use super::security::{self, CsrfToken};
use super::AppState;
use crate::accounts::{self, ADMIN};
use crate::db;

/// The cookie that holds a signed-in browser's session id.
pub const SESSION_COOKIE: &str = "goodhart_session";
/// How long a session lasts from sign-in.
pub const SESSION_DAYS: i64 = 30;

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Identity {
    /// A server that signs nobody in (neither `--auth-token` nor users).
    #[default]
    Open,
    /// The `--auth-token`, as a bearer or signed in with it.
    Admin,
    /// A user, by name.
    User(String),
}

impl Identity {
    /// What a run launched by this identity records as `launched_by`.
    pub fn launcher(&self) -> Option<&str> {
        match self {
            Self::User(name) => Some(name),
            Self::Open | Self::Admin => None,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Identity {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Self>().cloned().unwrap_or_default())
    }
}

/// The form token of a signed-in browser's session: what its forms must carry instead of the
/// double-submit cookie's.
#[derive(Debug, Clone)]
pub struct SessionCsrf(pub String);

/// What every page shows of a signed-in browser: who it is, and the sign-out form's token.
#[derive(Debug, Clone)]
pub struct Chrome {
    pub who: String,
    pub csrf: String,
}

impl askama::Value for Chrome {
    fn ref_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

tokio::task_local! {
    static CHROME: Chrome;
}

/// The signed-in browser's [`Chrome`] for the page being rendered, if any (`base.html` reads it
/// as the runtime value `"chrome"`).
pub fn chrome() -> Option<(&'static str, Chrome)> {
    CHROME.try_with(Clone::clone).ok().map(|c| ("chrome", c))
}

pub fn router() -> Router<AppState> {
    Router::new().route("/login", get(login_page).post(sign_in)).route("/logout", post(sign_out))
}

/// Whether this server asks who is asking: it has `--auth-token`, or users.
pub async fn required(state: &AppState) -> Result<bool, Error> {
    Ok(state.settings.auth_token.is_some() || db::users::any(&state.pool).await?)
}

/// What a signed-out request may still reach.
fn public(path: &str) -> bool {
    path == "/login" || path.starts_with("/static/") || path == "/api/openapi.json"
}

/// Finds who a request comes from (see the module) and lets it through, or sends it to sign in.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    if path.starts_with("/static/") {
        return next.run(request).await;
    }
    let found = match identify(&state, request.headers()).await {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    let Some((identity, session)) = found else {
        return next.run(request).await;
    };
    if identity == Identity::Open && !public(&path) {
        if path.starts_with("/api/") {
            return Error::Unauthorized(
                "sign in first: send `Authorization: Bearer <token>` with the server's --auth-token or a user's API \
                 token (`goodhart user token NAME`); a browser signs in at /login"
                    .into(),
            )
            .into_response();
        }
        let next_page = match *request.method() {
            Method::GET | Method::HEAD => {
                request.uri().path_and_query().map_or_else(|| "/".to_string(), ToString::to_string)
            }
            _ => "/".to_string(),
        };
        let query = serde_urlencoded::to_string([("next", next_page.as_str())]).unwrap_or_default();
        return Redirect::to(&format!("/login?{query}")).into_response();
    }
    let chrome = session.map(|csrf| {
        let who = match &identity {
            Identity::User(name) => name.clone(),
            _ => ADMIN.to_string(),
        };
        request.extensions_mut().insert(SessionCsrf(csrf.clone()));
        Chrome { who, csrf }
    });
    request.extensions_mut().insert(identity);
    match chrome {
        Some(chrome) => CHROME.scope(chrome, next.run(request)).await,
        None => next.run(request).await,
    }
}

/// `None`: this server signs nobody in. Otherwise who the request proves it is
/// ([`Identity::Open`]: nobody yet) and, for a signed-in browser, its session's form token.
async fn identify(state: &AppState, headers: &HeaderMap) -> Result<Option<(Identity, Option<String>)>, Error> {
    if !required(state).await? {
        return Ok(None);
    }
    let token = state.settings.auth_token.as_deref();
    if let Some(bearer) = super::bearer(headers) {
        if token.is_some_and(|t| security::constant_time_eq(bearer.as_bytes(), t.as_bytes())) {
            return Ok(Some((Identity::Admin, None)));
        }
        return match db::api_tokens::user_of(&state.pool, &accounts::sha256_hex(bearer)).await? {
            Some(name) => Ok(Some((Identity::User(name), None))),
            None => Err(Error::Unauthorized(
                "this bearer token is not valid here: it is revoked, mistyped, or another server's".into(),
            )),
        };
    }
    if let Some(id) = cookie(headers, SESSION_COOKIE) {
        let hash = accounts::sha256_hex(&id);
        if let Some(session) = db::sessions::get(&state.pool, &hash).await? {
            let identity = match (session.user_name, session.auth_token_sha256) {
                (Some(name), _) => Some(Identity::User(name)),
                // A session signed in with a token this server no longer has is over.
                (None, Some(was)) if token.is_some_and(|t| accounts::sha256_hex(t) == was) => Some(Identity::Admin),
                _ => None,
            };
            if let Some(identity) = identity {
                return Ok(Some((identity, Some(session_csrf(&id)))));
            }
        }
    }
    Ok(Some((Identity::Open, None)))
}

/// A session's form token: only its holder (the id is in an HttpOnly cookie) can know it.
fn session_csrf(session_id: &str) -> String {
    accounts::sha256_hex(&format!("csrf:{session_id}"))[..32].to_string()
}

/// The value of cookie `name`, if the request has a non-empty one.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    super::security::cookie(headers, name, |value| !value.is_empty())
}

/// Where to go after signing in: a path on this server, never another site (`//evil`, `/\evil`).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/\\") && n != "/login" => {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    next: String,
    user: String,
    error: String,
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_page(State(state): State<AppState>, csrf: CsrfToken, Query(q): Query<LoginQuery>) -> PageResult {
    if !required(&state).await? {
        return Ok(Redirect::to("/").into_response());
    }
    let form =
        LoginPage { csrf: csrf.0, next: safe_next(q.next.as_deref()), user: String::new(), error: String::new() };
    page(StatusCode::OK, &form)
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

/// Checks a name and password (or the `--auth-token`), and on success starts a session.
async fn sign_in(State(state): State<AppState>, csrf: CsrfToken, headers: HeaderMap, body: String) -> PageResult {
    if !required(&state).await? {
        return Ok(Redirect::to("/").into_response());
    }
    let form: LoginForm = serde_urlencoded::from_str(&body)
        .map_err(|e| Error::BadRequest(format!("a sign-in form has a user and a password: {e}")))?;
    let next = safe_next(form.next.as_deref());
    let user = form.user.trim().to_string();
    let signed_in = check_password(&state, &user, form.password).await?;
    let Some(user_id) = signed_in else {
        // One answer for an unknown name and a wrong password.
        let again = LoginPage { csrf: csrf.0, next, user, error: "Wrong user name or password.".into() };
        return page(StatusCode::UNAUTHORIZED, &again);
    };
    let id = accounts::new_secret("");
    let expires = db::now_ms() + SESSION_DAYS * 86_400_000;
    let admin_token = match user_id {
        None => state.settings.auth_token.as_deref().map(accounts::sha256_hex),
        Some(_) => None,
    };
    db::sessions::add(&state.pool, &accounts::sha256_hex(&id), user_id, admin_token.as_deref(), expires).await?;
    let secure = if state.settings.secure_cookies || over_tls(&headers) { "; Secure" } else { "" };
    let cookie =
        format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}", SESSION_DAYS * 86_400);
    let mut response = Redirect::to(&next).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// `Some(Some(user id))` for a user, `Some(None)` for the `--auth-token`, `None` for a wrong pair.
/// Every attempt costs one argon2 verification, the token's too: guessing is as slow either way,
/// and the time taken tells nothing of which names exist.
async fn check_password(state: &AppState, user: &str, password: String) -> Result<Option<Option<i64>>, Error> {
    let as_admin = user.is_empty() || user.eq_ignore_ascii_case(ADMIN);
    let found = if as_admin { None } else { db::users::by_name(&state.pool, user).await? };
    let token = state.settings.auth_token.clone().filter(|_| as_admin);
    // argon2 takes tens of milliseconds on purpose: off the async workers.
    tokio::task::spawn_blocking(move || match (&found, token) {
        (Some(u), _) => accounts::verify_password(&password, &u.password_hash).then_some(Some(u.id)),
        (None, token) => {
            accounts::verify_nobody(&password);
            let right = token
                .is_some_and(|t| !password.is_empty() && security::constant_time_eq(password.as_bytes(), t.as_bytes()));
            right.then_some(None)
        }
    })
    .await
    .map_err(|e| Error::Internal(format!("checking a password: {e}")))
}

/// Whether the browser reached this server over TLS, as the proxy in front of it says.
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').next().unwrap_or("").trim().eq_ignore_ascii_case("https"))
}

/// Ends this browser's session and forgets its cookie.
async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        db::sessions::remove(&state.pool, &accounts::sha256_hex(&id)).await?;
    }
    let mut response = Redirect::to("/login").into_response();
    let gone = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&gone) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_sign_in_a_browser_goes_back_only_to_this_servers_own_pages() {
        assert_eq!(safe_next(Some("/runs/3?x=1")), "/runs/3?x=1");
        for elsewhere in
            [None, Some(""), Some("https://evil.example/"), Some("//evil.example"), Some("/\\evil"), Some("/login")]
        {
            assert_eq!(safe_next(elsewhere), "/", "{elsewhere:?}");
        }
    }

    #[test]
    fn only_a_tls_proxy_makes_the_cookie_secure() {
        let headers = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-proto", HeaderValue::from_static(v));
            h
        };
        assert!(over_tls(&headers("https")) && over_tls(&headers("HTTPS, http")));
        assert!(!over_tls(&headers("http")) && !over_tls(&HeaderMap::new()));
    }

    #[test]
    fn a_sessions_form_token_is_fixed_for_it_and_differs_between_sessions() {
        assert_eq!(session_csrf("a"), session_csrf("a"));
        assert_ne!(session_csrf("a"), session_csrf("b"));
        assert_eq!(session_csrf("a").len(), 32);
    }
}
