//! Sign-in for the team: with `--auth-token` or users, pages send a signed-out browser to
//! `/login` and the API answers 401; a signed-in browser's session cookie and CSRF token work
//! its forms; users' API tokens work until revoked; runs record and filter by who launched them.
//! Without a token or users nothing of this shows.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{spawn, spawn_with, tiny_toy, TestServer};
use serde_json::{json, Value};

/// A client that shows redirects rather than following them, and keeps no cookies.
fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers().get_all(name).iter().map(|v| v.to_str().unwrap().to_string()).collect::<Vec<_>>().join("\n")
}

/// `name=value` of the first `Set-Cookie` for `name`, and its attributes.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<(String, String)> {
    r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).find_map(|c| {
        let (pair, attributes) = c.split_once(';').unwrap_or((&c, ""));
        pair.strip_prefix(&format!("{name}=")).map(|v| (v.to_string(), attributes.to_string()))
    })
}

/// The `csrf_token` a page's forms carry.
fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf_token\" value=\"").expect("a form with a csrf_token") + 25;
    html[at..at + 32].to_string()
}

/// Signs in through the form as a browser does (the sign-in page first, for its form token);
/// the answer to the form.
async fn sign_in(t: &TestServer, user: &str, password: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let page = browser().get(t.url("/login?next=%2Fruns%2Fnew")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let (cookie, _) = set_cookie(&page, "goodhart_csrf").expect("the sign-in page sets its form token");
    let csrf = csrf_of(&page.text().await.unwrap());
    let form = serde_urlencoded::to_string([
        ("csrf_token", csrf.as_str()),
        ("next", "/runs/new"),
        ("user", user),
        ("password", password),
    ])
    .unwrap();
    let mut request = browser()
        .post(t.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", format!("goodhart_csrf={cookie}"));
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    request.body(form).send().await.unwrap()
}

/// A signed-in browser's session cookie, after signing in as `user`.
async fn session(t: &TestServer, user: &str, password: &str) -> String {
    let r = sign_in(t, user, password, &[]).await;
    assert_eq!(r.status(), 303, "{user} signs in");
    let (id, _) = set_cookie(&r, "goodhart_session").expect("a session cookie");
    format!("goodhart_session={id}")
}

async fn add_user(t: &TestServer, name: &str, password: &str) {
    let hash = server::accounts::hash_password(password).unwrap();
    server::db::users::add(&t.server.state.pool, name, &hash).await.unwrap().expect("a new user");
}

/// `goodhart user …` on the server's database (SQLite, or the test's Postgres database),
/// `stdin` piped in; (success, stdout, stderr).
async fn goodhart_user(t: &TestServer, args: &[&str], stdin: &str) -> (bool, String, String) {
    let db = server::db::testing::database_url(t.dir.path()).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_goodhart"))
        .arg("user")
        .args(args)
        .args(["--database-url", &db])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses its arguments (a reserved name) exits without reading its input.
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        written => written.unwrap(),
    }
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_out_page_redirects_to_sign_in_and_the_api_answers_401_saying_what_to_send() {
    let t = spawn_with(|c| c.auth_token = Some("s3cret".into())).await;
    for (page, next) in [("/", "%2F"), ("/runs/new?from=3", "%2Fruns%2Fnew%3Ffrom%3D3"), ("/runs/1", "%2Fruns%2F1")] {
        let r = browser().get(t.url(page)).send().await.unwrap();
        assert_eq!(r.status(), 303, "{page}");
        assert_eq!(header(&r, "location"), format!("/login?next={next}"), "{page}");
    }
    for api in ["/api/runs", "/api/runs/1/checkpoints", "/api/models"] {
        let r = browser().get(t.url(api)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{api}");
        assert_eq!(header(&r, "www-authenticate"), "Bearer");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("Authorization: Bearer"), "{body}");
    }
    // What a signed-out browser still reaches: the sign-in page, its CSS, the API's description.
    let login = browser().get(t.url("/login")).send().await.unwrap();
    assert_eq!(login.status(), 200);
    let html = login.text().await.unwrap();
    assert!(html.contains("name=\"password\"") && !html.contains("Sign out"), "{html}");
    assert_eq!(browser().get(t.url("/static/app.css")).send().await.unwrap().status(), 200);
    assert_eq!(browser().get(t.url("/api/openapi.json")).send().await.unwrap().status(), 200);
    // A form posted without a session goes to sign in too, and stores nothing.
    let r = browser().post(t.url("/sweeps/demo")).body("csrf_token=x").send().await.unwrap();
    assert_eq!((r.status().as_u16(), header(&r, "location")), (303, "/login?next=%2F".into()));
    let runs = browser().get(t.url("/api/runs")).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(runs.json::<Value>().await.unwrap()["runs"], json!([]));
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_alike_for_unknown_users_and_a_right_one_opens_a_strict_http_only_session() {
    let t = spawn_with(|c| c.auth_token = Some("s3cret".into())).await;
    add_user(&t, "alice", "correct horse").await;
    let mut errors = Vec::new();
    for (user, password) in [("alice", "wrong horse"), ("mallory", "correct horse"), ("", "wrong"), ("admin", "")] {
        let r = sign_in(&t, user, password, &[]).await;
        assert_eq!(r.status(), 401, "{user}");
        assert!(set_cookie(&r, "goodhart_session").is_none(), "{user}");
        let html = r.text().await.unwrap();
        let error = html.split("id=\"login-error\"").nth(1).unwrap().split("</div>").next().unwrap().to_string();
        errors.push(error);
    }
    assert!(errors[0].contains("Wrong user name or password"), "{errors:?}");
    assert!(errors.iter().all(|e| *e == errors[0]), "one answer for every wrong pair: {errors:?}");

    let r = sign_in(&t, "alice", "correct horse", &[]).await;
    assert_eq!((r.status().as_u16(), header(&r, "location")), (303, "/runs/new".into()), "back where it was going");
    let (id, attributes) = set_cookie(&r, "goodhart_session").unwrap();
    assert!(id.len() >= 64, "{id}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=2592000"] {
        assert!(attributes.contains(attribute), "{attributes}");
    }
    assert!(!attributes.contains("Secure"), "plain HTTP: a Secure cookie would never come back");
    let page = browser().get(t.url("/")).header("cookie", format!("goodhart_session={id}")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"sign-out\"") && html.contains(">alice</span>"), "{html}");

    // Behind a TLS proxy the cookie is Secure; the token signs in as admin.
    let r = sign_in(&t, "", "s3cret", &[("x-forwarded-proto", "https")]).await;
    assert_eq!(r.status(), 303);
    assert!(set_cookie(&r, "goodhart_session").unwrap().1.contains("Secure"));
    let admin = session(&t, "admin", "s3cret").await;
    let html = browser().get(t.url("/")).header("cookie", &admin).send().await.unwrap().text().await.unwrap();
    assert!(html.contains(">admin</span>"), "{html}");
    t.server.stop().await.unwrap();

    // With --secure-cookies it is Secure without the proxy's word.
    let t = spawn_with(|c| {
        c.auth_token = Some("s3cret".into());
        c.secure_cookies = true;
    })
    .await;
    let r = sign_in(&t, "", "s3cret", &[]).await;
    assert_eq!(r.status(), 303);
    assert!(set_cookie(&r, "goodhart_session").unwrap().1.contains("Secure"));
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_browser_launches_from_the_form_and_downloads_on_a_token_protected_server() {
    let t = spawn_with(|c| c.auth_token = Some("s3cret".into())).await;
    add_user(&t, "alice", "correct horse").await;
    let cookie = session(&t, "alice", "correct horse").await;
    let page = browser().get(t.url("/runs/new")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(set_cookie(&page, "goodhart_csrf").is_none(), "a session needs no double-submit cookie");
    let csrf = csrf_of(&page.text().await.unwrap());
    let mut form: Vec<(String, String)> = vec![("csrf_token".into(), csrf.clone())];
    for (k, v) in tiny_toy(json!({"save_steps": 2})).as_object().unwrap() {
        form.push((k.clone(), v.to_string().trim_matches('"').to_string()));
    }
    let r = browser()
        .post(t.url("/runs/new"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(&form).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    let id: i64 = header(&r, "location").trim_start_matches("/runs/").parse().unwrap();

    let api = reqwest::Client::builder()
        .default_headers([("authorization".parse().unwrap(), "Bearer s3cret".parse().unwrap())].into_iter().collect())
        .build()
        .unwrap();
    let run = common::wait_for(&api, &t.base, id, "finished", |r| r["status"] == "finished").await;
    assert_eq!(run["launched_by"], "alice");
    let html = browser().get(t.url(&format!("/runs/{id}"))).header("cookie", &cookie).send().await.unwrap();
    let html = html.text().await.unwrap();
    assert!(html.contains("id=\"launched-by\">alice</a>"), "the run page names who launched it");
    // The browser downloads with its cookie alone; without it, nothing.
    let archive = t.url(&format!("/api/runs/{id}/checkpoints/2/archive"));
    let r = browser().get(&archive).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.bytes().await.unwrap().is_empty());
    assert_eq!(browser().get(&archive).send().await.unwrap().status(), 401);

    // The run page's buttons work with the session's token: cancel a run the token launched.
    let long = common::create_run(&api, &t.base, &tiny_toy(json!({"max_steps": 1_000_000}))).await;
    let r = browser()
        .post(t.url(&format!("/runs/{long}/cancel")))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf_token={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    common::wait_for(&api, &t.base, long, "cancelled", |r| r["status"] == "cancelled").await;

    // Signing out ends the session: its cookie opens nothing afterwards.
    let r = browser()
        .post(t.url("/logout"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf_token={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), header(&r, "location")), (303, "/login".into()));
    assert!(set_cookie(&r, "goodhart_session").unwrap().1.contains("Max-Age=0"));
    let r = browser().get(t.url("/")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 303);
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_form_post_is_refused_even_when_signed_in() {
    let t = spawn_with(|c| c.demo_sweep = common::fast_demo()).await;
    add_user(&t, "alice", "correct horse").await;
    add_user(&t, "bob", "battery staple").await;
    let alice = session(&t, "alice", "correct horse").await;
    let bob = session(&t, "bob", "battery staple").await;
    let token_of = |html: String| csrf_of(&html);
    let page = browser().get(t.url("/")).header("cookie", &alice).send().await.unwrap();
    let alices = token_of(page.text().await.unwrap());
    let page = browser().get(t.url("/")).header("cookie", &bob).send().await.unwrap();
    let bobs = token_of(page.text().await.unwrap());
    assert_ne!(alices, bobs, "each session has its own form token");
    let post = |cookie: String, body: String, origin: Option<&'static str>| {
        let mut r = browser()
            .post(t.url("/sweeps/demo"))
            .header("cookie", cookie)
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(origin) = origin {
            r = r.header("origin", origin).header("sec-fetch-site", "cross-site");
        }
        r.body(body).send()
    };
    // Another site's page can neither read Alice's token nor post from its own origin.
    let refused = [
        post(alice.clone(), String::new(), None).await.unwrap(),
        post(alice.clone(), format!("csrf_token={bobs}"), None).await.unwrap(),
        post(format!("{alice}; goodhart_csrf={bobs}"), format!("csrf_token={bobs}"), None).await.unwrap(),
        post(alice.clone(), format!("csrf_token={alices}"), Some("https://evil.example")).await.unwrap(),
    ];
    for (i, r) in refused.into_iter().enumerate() {
        assert_eq!(r.status(), 403, "attempt {i}");
    }
    let runs = browser().get(t.url("/api/runs")).header("cookie", &alice).send().await.unwrap();
    assert_eq!(runs.json::<Value>().await.unwrap()["runs"], json!([]));
    let r = post(alice.clone(), format!("csrf_token={alices}"), None).await.unwrap();
    assert_eq!(r.status(), 303, "her own page's form goes through");
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_api_token_works_until_revoked_and_runs_filter_by_who_launched_them() {
    let t = spawn_with(|c| c.auth_token = Some("s3cret".into())).await;
    let (ok, _, err) = goodhart_user(&t, &["add", "alice", "--password-stdin"], "correct horse\n").await;
    assert!(ok, "{err}");
    let (ok, _, err) = goodhart_user(&t, &["add", "bob", "--password-stdin"], "short\n").await;
    assert!(!ok && err.contains("at least 8 characters"), "{err}");
    let (ok, _, err) = goodhart_user(&t, &["add", "bob", "--password-stdin"], "battery staple\n").await;
    assert!(ok, "{err}");
    let (ok, _, err) = goodhart_user(&t, &["add", "alice", "--password-stdin"], "another one\n").await;
    assert!(!ok && err.contains("already a user"), "{err}");
    let (ok, _, err) = goodhart_user(&t, &["add", "admin", "--password-stdin"], "another one\n").await;
    assert!(!ok && err.contains("reserved"), "{err}");
    let mut tokens = Vec::new();
    for (user, label) in [("alice", "ci"), ("bob", "laptop")] {
        let (ok, out, err) = goodhart_user(&t, &["token", user, "--label", label], "").await;
        assert!(ok && err.contains("shown once"), "{err}");
        tokens.push(out.trim().to_string());
    }
    let (alices, bobs) = (tokens[0].clone(), tokens[1].clone());
    assert!(alices.starts_with("gdh_") && alices != bobs);
    let (_, listed, _) = goodhart_user(&t, &["list"], "").await;
    assert!(listed.contains("alice") && listed.contains("\"ci\"") && !listed.contains(&alices), "{listed}");

    let api = |bearer: &str| {
        let auth = format!("Bearer {bearer}");
        reqwest::Client::builder()
            .default_headers([("authorization".parse().unwrap(), auth.parse().unwrap())].into_iter().collect())
            .build()
            .unwrap()
    };
    let mut by = std::collections::BTreeMap::new();
    for (who, bearer) in [("alice", &alices), ("bob", &bobs), ("token", &"s3cret".to_string()), ("alice", &alices)] {
        let id = common::create_run(&api(bearer), &t.base, &tiny_toy(json!({}))).await;
        by.entry(who).or_insert_with(Vec::new).push(id);
    }
    let listed = |query: &'static str| {
        let client = api("s3cret");
        let url = t.url(&format!("/api/runs{query}"));
        async move {
            let body: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            let mut ids: Vec<i64> =
                body["runs"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
            ids.sort_unstable();
            (ids, body)
        }
    };
    assert_eq!(listed("?launched_by=alice").await.0, by["alice"]);
    assert_eq!(listed("?launched_by=bob").await.0, by["bob"]);
    assert_eq!(listed("?launched_by=nobody").await.0, Vec::<i64>::new());
    let (all, body) = listed("").await;
    assert_eq!(all.len(), 4);
    let token_run = body["runs"].as_array().unwrap().iter().find(|r| r["id"] == json!(by["token"][0])).unwrap();
    assert_eq!(token_run["launched_by"], Value::Null, "the --auth-token is nobody in particular");
    // The runs page filters the same way, and shows the column.
    let admin = session(&t, "", "s3cret").await;
    let html = browser().get(t.url("/?launched_by=bob")).header("cookie", &admin).send().await.unwrap();
    let html = html.text().await.unwrap();
    assert!(html.contains(&format!("data-run=\"{}\"", by["bob"][0])), "{html}");
    assert!(!html.contains(&format!("data-run=\"{}\"", by["alice"][0])), "{html}");
    assert!(html.contains("Launched by") && html.contains("<option value=\"bob\" selected>"), "{html}");

    // Revoked: the token answers 401, saying it is not valid; the other keeps working.
    let (ok, out, err) = goodhart_user(&t, &["revoke-token", "alice", "--label", "ci"], "").await;
    assert!(ok && out.contains("revoked 1 token"), "{out}{err}");
    let r = api(&alices).post(t.url("/api/runs")).json(&tiny_toy(json!({}))).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("not valid"));
    assert_eq!(api(&alices).get(t.url("/api/runs")).send().await.unwrap().status(), 401);
    assert_eq!(api(&bobs).get(t.url("/api/runs")).send().await.unwrap().status(), 200);
    // Removing a user ends their tokens and sessions; their runs keep their name.
    let bob_session = session(&t, "bob", "battery staple").await;
    let (ok, _, err) = goodhart_user(&t, &["remove", "bob"], "").await;
    assert!(ok, "{err}");
    assert_eq!(api(&bobs).get(t.url("/api/runs")).send().await.unwrap().status(), 401);
    assert_eq!(browser().get(t.url("/")).header("cookie", &bob_session).send().await.unwrap().status(), 303);
    assert_eq!(listed("?launched_by=bob").await.0, by["bob"]);
    for id in all {
        let _ = api("s3cret").post(t.url(&format!("/api/runs/{id}/cancel"))).send().await;
    }
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_laptop_path_without_a_token_or_users_signs_nobody_in() {
    let t = spawn().await;
    let page = browser().get(t.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(!html.contains("Sign out") && !html.contains("Launched by"), "{html}");
    let r = browser().get(t.url("/login")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), header(&r, "location")), (303, "/".into()), "nothing to sign in to");
    // Any bearer, or none: the API is open on loopback as before.
    let id = t.create_run(&tiny_toy(json!({}))).await;
    let r = browser().get(t.url(&format!("/api/runs/{id}"))).bearer_auth("anything").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["launched_by"], Value::Null);
    let (_, doc) = t.get("/api/openapi.json").await;
    assert!(!doc.to_string().contains("\"security\""));
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_password_replaces_the_old_one_and_signs_the_user_out_of_every_browser() {
    let t = spawn_with(|c| c.auth_token = Some("s3cret".into())).await;
    let (ok, _, err) = goodhart_user(&t, &["add", "alice", "--password-stdin"], "correct horse\n").await;
    assert!(ok, "{err}");
    let cookie = session(&t, "alice", "correct horse").await;
    let page = |cookie: String| {
        let url = t.url("/runs/new");
        async move { browser().get(url).header("cookie", cookie).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(page(cookie.clone()).await, 200, "signed in");

    let (ok, out, err) = goodhart_user(&t, &["password", "alice", "--password-stdin"], "battery staple\n").await;
    assert!(ok && out.contains("signed them out"), "{out}{err}");
    assert_eq!(page(cookie).await, 303, "the old session ended: to the sign-in form");
    assert_eq!(sign_in(&t, "alice", "correct horse", &[]).await.status(), 401, "the old password is refused");
    session(&t, "alice", "battery staple").await;
    let (ok, _, err) = goodhart_user(&t, &["password", "nobody", "--password-stdin"], "battery staple\n").await;
    assert!(!ok && err.contains("no user \"nobody\""), "{err}");
    let (ok, _, err) = goodhart_user(&t, &["password", "alice", "--password-stdin"], "short\n").await;
    assert!(!ok && err.contains("at least 8 characters"), "{err}");
}
