//! The web interface under `/ui/`: browse repositories, tags and images, delete tags and manifests. Served by
//! the proxy on its own port and certificate, for the users of its htpasswd file, under its access rules.
//!
//! - Logging in checks the password exactly as Basic auth does (the same cache, throttling and audit), then
//!   sets a session cookie ([`session`]): `HttpOnly`, `Secure`, `SameSite=Strict`, signed, expiring.
//! - Every read goes to the registry through the proxy's upstreams, as the user's own pull would, with the
//!   user's access rules applied here first: the list shows only repositories the user may pull, a repository
//!   the user may not pull is a 403 page, and delete controls show only where the user may delete and the
//!   registry has deletes enabled.
//! - State-changing requests are `POST`s that must come from this origin (`Origin`, or `Sec-Fetch-Site`) and
//!   carry the session's form token.
//! - Pages are rendered by [`pages`] through [`html::Html`], which escapes every piece of text.

pub mod html;
pub mod pages;
pub mod session;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::audit::AuditEvent;
use crate::authn::AuthFailure;
use crate::authz::{Access, Action, Decision};
use crate::forward::{client_host, rewrite_request_headers, ClientContext, ProxyBody, RelayBody};
use crate::server::ProxyState;
use pages::Chrome;
use session::{Session, Sessions, COOKIE};

/// Repositories per page.
const REPOS_PER_PAGE: usize = 50;
/// Tags per page.
const TAGS_PER_PAGE: usize = 50;
/// The largest answer read from the registry (a catalog, a tag list, a manifest, a config).
const MAX_UPSTREAM_BODY: usize = 16 * 1024 * 1024;
/// The largest image config read.
const MAX_CONFIG: u64 = 4 * 1024 * 1024;
/// The largest form accepted.
const MAX_FORM: usize = 16 * 1024;
/// The longest a form may take to arrive.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

const CSS: &str = include_str!("assets/berth.css");
const JS: &str = include_str!("assets/berth.js");

/// Accepted manifest types, as a pull sends them.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// The web interface's state.
#[derive(Debug)]
pub struct Ui {
    sessions: Sessions,
}

impl Ui {
    /// Sessions keyed in `certs_dir`, lasting `ttl`.
    pub fn new(certs_dir: &std::path::Path, ttl: Duration) -> Ui {
        Ui {
            sessions: Sessions::load(certs_dir, ttl),
        }
    }

    /// The sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }
}

/// Whether a path is the web interface's.
pub fn is_ui_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// What a page needs of the request.
struct Ctx<'a> {
    state: &'a ProxyState,
    ui: &'a Ui,
    host: HeaderValue,
    host_text: String,
    peer: SocketAddr,
    client: IpAddr,
    session: Option<Session>,
}

impl Ctx<'_> {
    fn chrome(&self) -> Chrome {
        Chrome {
            host: self.host_text.clone(),
            user: self.session.as_ref().map(|s| s.user.clone()),
            csrf: self
                .session
                .as_ref()
                .map(|s| self.ui.sessions.form_token(s)),
            now: now_secs(),
        }
    }

    fn user(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.user.as_str())
    }

    fn may(&self, repo: &str, action: Action) -> bool {
        let access = Access::Repo {
            repo: repo.to_string(),
            action,
            mount: None,
            audited: None,
        };
        matches!(
            self.state.authz().decide(&access, self.user()),
            Decision::Allow(_)
        )
    }

    fn page(&self, status: StatusCode, body: String) -> Response<ProxyBody> {
        html_response(status, body)
    }

    fn error(&self, status: StatusCode, title: &str, message: &str) -> Response<ProxyBody> {
        self.page(
            status,
            pages::error(&self.chrome(), status.as_u16(), title, message),
        )
    }

    /// A request to the registry, as the user.
    async fn upstream(
        &self,
        method: Method,
        target: &str,
        accept: Option<&'static str>,
        pull_filter: Option<String>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), Response<ProxyBody>> {
        let mut req = Request::builder()
            .method(method)
            .uri(target)
            .header(header::HOST, self.host.clone());
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        let Ok(req) = req.body(()) else {
            return Err(self.error(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "That address names nothing this interface can show.",
            ));
        };
        let (mut parts, ()) = req.into_parts();
        let client = ClientContext {
            peer_ip: self.peer.ip(),
            peer_trusted: false,
        };
        rewrite_request_headers(
            &mut parts.headers,
            Some(self.host.clone()),
            &client,
            self.user(),
            false,
        );
        // After the rewrite, which drops any filter a client sent.
        if let Some(f) = pull_filter {
            let Ok(v) = HeaderValue::try_from(f) else {
                return Err(self.error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error",
                    "The access rules' filter could not be sent to the registry.",
                ));
            };
            parts.headers.insert(berth_glob::PULL_FILTER_HEADER, v);
        }
        let body = RelayBody::new(
            http_body_util::Empty::<Bytes>::new(),
            std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        );
        let resp = match self.state.upstreams().send(parts, body).await {
            Ok(r) => r,
            Err(e) => {
                let (status, _, message) = e.parts();
                return Err(self.error(
                    status,
                    "The registry did not answer",
                    &format!("{message}. Try again in a moment; if it lasts, the registry behind this proxy is down."),
                ));
            }
        };
        let (parts, body) = resp.into_parts();
        let idle = Duration::from_secs(self.state.config().read_timeout_secs);
        let read = tokio::time::timeout(
            idle,
            http_body_util::Limited::new(body, MAX_UPSTREAM_BODY).collect(),
        );
        let bytes = match read.await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => {
                tracing::warn!("web interface: reading the registry's answer to {target}: {e}");
                return Err(self.error(
                    StatusCode::BAD_GATEWAY,
                    "The registry's answer could not be read",
                    "It was cut off or too large to show.",
                ));
            }
            Err(_) => {
                tracing::warn!("web interface: the registry's answer to {target} stalled");
                return Err(self.error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "The registry's answer stalled",
                    "Try again in a moment.",
                ));
            }
        };
        Ok((parts.status, parts.headers, bytes))
    }

    /// A JSON answer of the registry (200 only) with its headers; otherwise the page that says what went
    /// wrong with `what`.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        target: &str,
        accept: Option<&'static str>,
        what: &str,
    ) -> Result<(HeaderMap, Bytes, T), Response<ProxyBody>> {
        let (status, headers, body) = self.upstream(Method::GET, target, accept, None).await?;
        if status != StatusCode::OK {
            return Err(self.registry_error(status, &body, what));
        }
        match serde_json::from_slice::<T>(&body) {
            Ok(v) => Ok((headers, body, v)),
            Err(e) => Err(self.error(
                StatusCode::BAD_GATEWAY,
                "The registry's answer could not be read",
                &format!("{what}: not what this interface expects ({e})."),
            )),
        }
    }

    /// The registry's error answer as a page.
    fn registry_error(&self, status: StatusCode, body: &[u8], what: &str) -> Response<ProxyBody> {
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("the registry answered {status}"));
        match status {
            StatusCode::NOT_FOUND => self.error(
                StatusCode::NOT_FOUND,
                "Not found",
                &format!("{what}: {message}."),
            ),
            StatusCode::BAD_REQUEST => self.error(
                StatusCode::BAD_REQUEST,
                "Bad request",
                &format!("{what}: {message}."),
            ),
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => self.error(
                StatusCode::FORBIDDEN,
                "Not allowed",
                &format!("{what}: {message}."),
            ),
            _ => self.error(
                StatusCode::BAD_GATEWAY,
                "The registry refused",
                &format!("{what}: {message}."),
            ),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn full_body(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

fn secure_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

/// A whole answer of the interface's own: its type and length, how long it may be cached, the security headers.
fn response(
    status: StatusCode,
    content_type: &'static str,
    cache_control: Option<&'static str>,
    body: Bytes,
) -> Response<ProxyBody> {
    let len = body.len();
    let mut resp = Response::new(full_body(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(c) = cache_control {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(c));
    }
    secure_headers(h);
    resp
}

fn html_response(status: StatusCode, body: String) -> Response<ProxyBody> {
    response(
        status,
        "text/html; charset=utf-8",
        Some("no-store"),
        Bytes::from(body),
    )
}

fn redirect(to: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(full_body(Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn asset(content_type: &'static str, body: &'static str) -> Response<ProxyBody> {
    response(
        StatusCode::OK,
        content_type,
        Some("public, max-age=3600"),
        Bytes::from_static(body.as_bytes()),
    )
}

fn query_params(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn page_number(q: &[(String, String)]) -> usize {
    param(q, "page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, 1_000_000)
}

/// A tag, as the distribution spec allows them.
fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A digest: `algorithm:hex`, checked loosely (the registry checks it again).
fn valid_digest(d: &str) -> bool {
    match d.split_once(':') {
        Some((algo, hex)) => {
            !algo.is_empty()
                && algo
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+._-".contains(&c))
                && hex.len() >= 32
                && hex.len() <= 128
                && hex.bytes().all(|c| c.is_ascii_hexdigit())
        }
        None => false,
    }
}

fn valid_reference(r: &str) -> bool {
    valid_tag(r) || valid_digest(r)
}

/// Where to go after logging in: a page of the interface, nothing else.
fn safe_next(next: &str) -> &str {
    if next.starts_with("/ui/")
        && !next.starts_with("//")
        && !next.contains('\\')
        && next.bytes().all(|b| b.is_ascii_graphic())
    {
        next
    } else {
        "/ui/"
    }
}

/// Whether a state-changing request comes from one of this interface's own pages: the browser's `Origin`
/// names this host over https, or (older browsers without `Origin`) `Sec-Fetch-Site` says same-origin. A
/// request with neither comes from no browser, and cross-site forgery needs one.
fn same_origin(headers: &HeaderMap, host: &str) -> bool {
    if let Some(origin) = headers.get(header::ORIGIN) {
        return origin.as_bytes() == format!("https://{host}").as_bytes();
    }
    match headers.get("sec-fetch-site").map(HeaderValue::as_bytes) {
        Some(site) => site == b"same-origin" || site == b"none",
        None => true,
    }
}

async fn read_form(req: Request<Incoming>) -> Option<Vec<(String, String)>> {
    // A form is small: one that does not arrive in time holds no connection for long.
    let read = tokio::time::timeout(
        FORM_TIMEOUT,
        http_body_util::Limited::new(req.into_body(), MAX_FORM).collect(),
    );
    let body = read.await.ok()?.ok()?.to_bytes();
    Some(form_urlencoded::parse(&body).into_owned().collect())
}

/// Answers a request under `/ui`; returns the response and the user it was answered for.
pub(crate) async fn handle(
    state: &ProxyState,
    ui: &Ui,
    req: Request<Incoming>,
    peer: SocketAddr,
    client: IpAddr,
) -> (Response<ProxyBody>, Option<String>) {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/ui" => return (redirect("/ui/"), None),
        "/ui/static/berth.css" => return (asset("text/css; charset=utf-8", CSS), None),
        "/ui/static/berth.js" => {
            return (asset("text/javascript; charset=utf-8", JS), None);
        }
        _ => {}
    }
    let Some(host) = client_host(req.version(), req.uri(), req.headers()) else {
        return (
            html_response(
                StatusCode::BAD_REQUEST,
                "a Host header is required\n".into(),
            ),
            None,
        );
    };
    // The name the browser used: a trusted front proxy's `X-Forwarded-Host`, else `Host`.
    let forwarded = state
        .trusts(peer.ip())
        .then(|| req.headers().get("x-forwarded-host"))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| {
            !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    let host_text = match forwarded {
        Some(f) => f.to_string(),
        None => String::from_utf8_lossy(host.as_bytes()).into_owned(),
    };
    let session = session::cookie_value(req.headers()).and_then(|v| {
        ui.sessions
            .verify(v, |user| state.auth().user_fingerprint(user))
    });
    let ctx = Ctx {
        state,
        ui,
        host,
        host_text,
        peer,
        client,
        session,
    };
    let user = ctx.user().map(str::to_string);
    let method = req.method().clone();
    let read = matches!(method, Method::GET | Method::HEAD);
    let resp = match (path.as_str(), read) {
        ("/ui/help", true) => help(&ctx),
        ("/ui/ca.crt", true) => ca_cert(&ctx),
        ("/ui/login", true) => {
            let q = query_params(&req);
            let next = safe_next(param(&q, "next").unwrap_or("/ui/"));
            ctx.page(StatusCode::OK, pages::login(&ctx.chrome(), next, "", None))
        }
        ("/ui/login", false) if method == Method::POST => return login(&ctx, req).await,
        ("/ui/logout", false) if method == Method::POST => logout(&ctx, req).await,
        _ if ctx.session.is_none() => {
            if read {
                let target = req.uri().path_and_query().map_or("/ui/", |p| p.as_str());
                let q: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("next", target)
                    .finish();
                redirect(&format!("/ui/login?{q}"))
            } else if !same_origin(req.headers(), &ctx.host_text) {
                // A browser sends no SameSite=Strict cookie with a form from another site.
                ctx.error(
                    StatusCode::FORBIDDEN,
                    "Refused",
                    "This form was sent from another site.",
                )
            } else {
                ctx.error(
                    StatusCode::FORBIDDEN,
                    "Not logged in",
                    "Log in first; your session may have ended.",
                )
            }
        }
        ("/ui/", true) => repos(&ctx, &req).await,
        (p, _) if p.starts_with("/ui/r/") => {
            let rest = &p["/ui/r/".len()..];
            match rest.split_once("/-/") {
                None if read => tags(&ctx, &req, rest.trim_end_matches('/')).await,
                Some((repo, r)) if read && r.starts_with("image/") => {
                    image(&ctx, repo, &r["image/".len()..]).await
                }
                Some((repo, "delete")) if read => confirm_delete(&ctx, &req, repo),
                Some((repo, "delete")) if method == Method::POST => delete(&ctx, req, repo).await,
                _ if !read => ctx.error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "Not allowed",
                    "This address only shows a page.",
                ),
                _ => ctx.error(StatusCode::NOT_FOUND, "Not found", "No such page."),
            }
        }
        (_, false) => ctx.error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Not allowed",
            "This address only shows a page.",
        ),
        _ => ctx.error(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such page in this interface.",
        ),
    };
    (resp, user)
}

fn help(ctx: &Ctx<'_>) -> Response<ProxyBody> {
    let path = ctx.state.config().certs_dir.join(crate::ca::CA_CERT);
    let ca = std::fs::read(&path).ok().and_then(|pem| {
        let der = x509_parser::pem::parse_x509_pem(&pem).ok()?.1.contents;
        use sha2::Digest as _;
        let fp = sha2::Sha256::digest(&der);
        Some(pages::CaInfo {
            path: path.display().to_string(),
            fingerprint: fp
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":"),
        })
    });
    ctx.page(StatusCode::OK, pages::help(&ctx.chrome(), ca.as_ref()))
}

fn ca_cert(ctx: &Ctx<'_>) -> Response<ProxyBody> {
    let path = ctx.state.config().certs_dir.join(crate::ca::CA_CERT);
    match std::fs::read(&path) {
        Ok(pem) if pem.starts_with(b"-----BEGIN CERTIFICATE-----") => {
            let mut resp = response(
                StatusCode::OK,
                "application/x-pem-file",
                None,
                Bytes::from(pem),
            );
            resp.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"devdockerCA.crt\""),
            );
            resp
        }
        _ => ctx.error(
            StatusCode::NOT_FOUND,
            "No development CA here",
            "This registry's certificate comes from its operator, not from berth's development CA.",
        ),
    }
}

async fn login(ctx: &Ctx<'_>, req: Request<Incoming>) -> (Response<ProxyBody>, Option<String>) {
    let chrome = ctx.chrome();
    if !same_origin(req.headers(), &ctx.host_text) {
        return (
            ctx.error(
                StatusCode::FORBIDDEN,
                "Refused",
                "This form was sent from another site.",
            ),
            None,
        );
    }
    let Some(form) = read_form(req).await else {
        return (
            ctx.error(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "The form could not be read.",
            ),
            None,
        );
    };
    let user = param(&form, "user").unwrap_or("");
    let password = param(&form, "password").unwrap_or("");
    let next = safe_next(param(&form, "next").unwrap_or("/ui/")).to_string();
    let shown_user = crate::authn::cut_name(user, 256);
    let again = |status: StatusCode, message: &str| {
        html_response(
            status,
            pages::login(&chrome, &next, shown_user, Some(message)),
        )
    };
    if user.is_empty() || user.contains(':') {
        return (
            again(StatusCode::UNAUTHORIZED, "Wrong user name or password."),
            None,
        );
    }
    use base64::Engine as _;
    let header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let state = ctx.state;
    let (status, reason, mut resp) = match state
        .auth()
        .authenticate_from(Some(header.as_bytes()), ctx.client)
        .await
    {
        Ok(user) => {
            state.metrics().auth("success");
            let Some(fp) = state.auth().user_fingerprint(&user) else {
                return (
                    again(StatusCode::UNAUTHORIZED, "Wrong user name or password."),
                    None,
                );
            };
            let cookie = ctx.ui.sessions.issue(&user, &fp);
            let mut resp = redirect(&next);
            let set = format!(
                "{COOKIE}={cookie}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
                ctx.ui.sessions.ttl().as_secs()
            );
            if let Ok(v) = HeaderValue::from_str(&set) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            return (resp, Some(user));
        }
        Err(AuthFailure::Throttled(wait)) => {
            state.metrics().auth("throttled");
            let secs = wait.as_secs().max(1);
            let mut resp = again(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Too many failed attempts. Try again in {secs} seconds."),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            (429, "authentication throttled", resp)
        }
        Err(AuthFailure::Busy) => {
            state.metrics().auth("busy");
            return (
                again(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The registry is too busy checking passwords. Try again in a moment.",
                ),
                None,
            );
        }
        Err(_) => {
            state.metrics().auth("failure");
            (
                401,
                "credentials rejected",
                again(StatusCode::UNAUTHORIZED, "Wrong user name or password."),
            )
        }
    };
    state.audit().record(&AuditEvent {
        user: Some(shown_user),
        client: ctx.client,
        action: "login",
        repository: None,
        reference: None,
        status,
        reason: Some(reason),
    });
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    (resp, None)
}

/// The session and form checks of a state-changing request; the form when they pass.
async fn checked_form(
    ctx: &Ctx<'_>,
    req: Request<Incoming>,
) -> Result<(Session, Vec<(String, String)>), Response<ProxyBody>> {
    let refused = |message: &str| ctx.error(StatusCode::FORBIDDEN, "Refused", message);
    if !same_origin(req.headers(), &ctx.host_text) {
        return Err(refused("This form was sent from another site."));
    }
    let Some(session) = ctx.session.clone() else {
        return Err(refused("Log in first; your session may have ended."));
    };
    let Some(form) = read_form(req).await else {
        return Err(ctx.error(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The form could not be read.",
        ));
    };
    if !ctx
        .ui
        .sessions
        .form_token_ok(&session, param(&form, "csrf").unwrap_or(""))
    {
        return Err(refused(
            "This form does not belong to your session. Reload the page and try again.",
        ));
    }
    Ok((session, form))
}

async fn logout(ctx: &Ctx<'_>, req: Request<Incoming>) -> Response<ProxyBody> {
    let (session, _) = match checked_form(ctx, req).await {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    // A small file written on this thread: logouts are rare.
    ctx.ui.sessions.revoke(&session);
    let mut resp = redirect("/ui/login");
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-berth_session=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict",
        ),
    );
    resp
}

#[derive(Deserialize)]
struct Catalog {
    #[serde(default)]
    repositories: Vec<String>,
}

#[derive(Deserialize)]
struct Summary {
    #[serde(default)]
    tags: u64,
    #[serde(default)]
    pushed: Option<u64>,
}

async fn repos(ctx: &Ctx<'_>, req: &Request<Incoming>) -> Response<ProxyBody> {
    let q = query_params(req);
    let filter = param(&q, "q").unwrap_or("").trim().to_string();
    let page = page_number(&q);
    let names = match ctx.state.authz().decide(&Access::Listing, ctx.user()) {
        Decision::Allow(grant) => {
            let (status, _, body) = match ctx
                .upstream(Method::GET, "/v2/_catalog", None, grant.pull_filter)
                .await
            {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            if status != StatusCode::OK {
                return ctx.registry_error(status, &body, "The repository list");
            }
            serde_json::from_slice::<Catalog>(&body)
                .map(|c| c.repositories)
                .unwrap_or_default()
        }
        _ => Vec::new(),
    };
    // The registry filtered the list already; this keeps the page to names it can ask about.
    let matching: Vec<String> = names
        .into_iter()
        .filter(|n| {
            n.contains(filter.as_str())
                && berth_glob::valid_repo_name(n)
                && ctx.may(n, Action::Pull)
        })
        .collect();
    let total = matching.len();
    let pages = total.div_ceil(REPOS_PER_PAGE).max(1);
    let page = page.min(pages);
    let on_page: Vec<String> = matching
        .into_iter()
        .skip((page - 1) * REPOS_PER_PAGE)
        .take(REPOS_PER_PAGE)
        .collect();
    // Eight at a time: a summary reads the time of every tag of its repository.
    let mut summaries = Vec::with_capacity(on_page.len());
    for chunk in on_page.chunks(8) {
        summaries.extend(
            futures_util::future::join_all(chunk.iter().map(|name| async move {
                let target = format!("/v2/{name}/tags/list?berth=summary");
                match ctx.upstream(Method::GET, &target, None, None).await {
                    Ok((StatusCode::OK, _, body)) => serde_json::from_slice::<Summary>(&body).ok(),
                    _ => None,
                }
            }))
            .await,
        );
    }
    let rows = on_page
        .into_iter()
        .zip(summaries)
        .map(|(name, s)| pages::RepoRow {
            name,
            tags: s.as_ref().map(|s| s.tags),
            pushed: s.and_then(|s| s.pushed),
        })
        .collect();
    ctx.page(
        StatusCode::OK,
        pages::repos(
            &ctx.chrome(),
            &pages::Repos {
                filter,
                page,
                pages,
                total,
                rows,
            },
        ),
    )
}

/// A repository the page may show: a valid name the user may pull; otherwise the page that says why not.
fn pullable<'a>(ctx: &Ctx<'_>, repo: &'a str) -> Result<&'a str, Box<Response<ProxyBody>>> {
    if !berth_glob::valid_repo_name(repo) {
        return Err(Box::new(ctx.error(
            StatusCode::NOT_FOUND,
            "Not found",
            "That is not a repository name.",
        )));
    }
    if !ctx.may(repo, Action::Pull) {
        return Err(Box::new(ctx.error(
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!("You may not pull {repo}. Ask an administrator of this registry for access."),
        )));
    }
    Ok(repo)
}

#[derive(Deserialize)]
struct DetailRow {
    tag: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    platforms: Vec<String>,
    #[serde(default, rename = "artifactType")]
    artifact_type: Option<String>,
    #[serde(default)]
    pushed: Option<u64>,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default)]
    total: usize,
    #[serde(default)]
    deletes: bool,
    #[serde(default)]
    tags: Vec<DetailRow>,
}

async fn tags(ctx: &Ctx<'_>, req: &Request<Incoming>, repo: &str) -> Response<ProxyBody> {
    let repo = match pullable(ctx, repo) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let q = query_params(req);
    let filter = param(&q, "q").unwrap_or("").trim().to_string();
    let sort = match param(&q, "sort") {
        Some(s @ ("name" | "-name" | "pushed" | "-pushed")) => s.to_string(),
        _ => "name".to_string(),
    };
    let mut page = page_number(&q);
    let details = loop {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("berth", "details")
            .append_pair("sort", &sort)
            .append_pair("offset", &((page - 1) * TAGS_PER_PAGE).to_string())
            .append_pair("n", &TAGS_PER_PAGE.to_string())
            .append_pair("q", &filter)
            .finish();
        let target = format!("/v2/{repo}/tags/list?{query}");
        let what = format!("Repository {repo}");
        let details = match ctx.get_json::<Details>(&target, None, &what).await {
            Ok((_, _, d)) => d,
            Err(resp) => return resp,
        };
        let pages = details.total.div_ceil(TAGS_PER_PAGE).max(1);
        // Past the last page (tags deleted meanwhile, an edited address): show the last one.
        if page > pages {
            page = pages;
            continue;
        }
        break details;
    };
    let notice = param(&q, "deleted")
        .filter(|r| valid_reference(r))
        .map(|r| format!("Deleted {r}."));
    let can_delete = details.deletes && ctx.may(repo, Action::Delete);
    let t = pages::Tags {
        repo: repo.to_string(),
        filter,
        sort,
        page,
        pages: details.total.div_ceil(TAGS_PER_PAGE).max(1),
        total: details.total,
        rows: details
            .tags
            .into_iter()
            .map(|r| pages::TagRow {
                tag: r.tag,
                digest: r.digest,
                size: r.size,
                platforms: r.platforms,
                artifact_type: r.artifact_type,
                pushed: r.pushed,
            })
            .collect(),
        can_delete,
        notice,
    };
    ctx.page(StatusCode::OK, pages::tags(&ctx.chrome(), &t))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Desc {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<serde_json::Value>,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    annotations: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<Desc>,
    #[serde(default)]
    layers: Vec<Desc>,
    #[serde(default)]
    manifests: Option<Vec<Desc>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    exposed_ports: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize, Default)]
struct HistoryEntry {
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    created_by: Option<String>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    empty_layer: bool,
}

#[derive(Deserialize, Default)]
struct ImageConfig {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    config: Option<RunConfig>,
    #[serde(default)]
    history: Vec<HistoryEntry>,
}

fn platform_label(v: &serde_json::Value) -> Option<String> {
    let os = v["os"].as_str()?;
    let arch = v["architecture"].as_str().unwrap_or("");
    Some(match v["variant"].as_str() {
        Some(var) if !var.is_empty() => format!("{os}/{arch}/{var}"),
        _ => format!("{os}/{arch}"),
    })
}

fn is_image_config(t: Option<&str>) -> bool {
    matches!(
        t,
        Some("application/vnd.oci.image.config.v1+json")
            | Some("application/vnd.docker.container.image.v1+json")
    )
}

fn config_view(c: ImageConfig) -> pages::Config {
    let run = c.config.unwrap_or_default();
    let platform = match &c.variant {
        Some(v) if !v.is_empty() => format!("{}/{}/{v}", c.os, c.architecture),
        _ => format!("{}/{}", c.os, c.architecture),
    };
    pages::Config {
        platform,
        created: c.created,
        entrypoint: run.entrypoint,
        cmd: run.cmd,
        working_dir: run.working_dir.filter(|w| !w.is_empty()),
        user: run.user.filter(|u| !u.is_empty()),
        env: run.env.unwrap_or_default(),
        labels: run.labels.unwrap_or_default().into_iter().collect(),
        ports: run.exposed_ports.unwrap_or_default().into_keys().collect(),
        history: c
            .history
            .into_iter()
            .map(|h| {
                let by = h
                    .created_by
                    .or(h.comment)
                    .unwrap_or_default()
                    .replace("/bin/sh -c #(nop) ", "");
                (h.created, by, h.empty_layer)
            })
            .collect(),
    }
}

async fn image(ctx: &Ctx<'_>, repo: &str, reference: &str) -> Response<ProxyBody> {
    let repo = match pullable(ctx, repo) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if !valid_reference(reference) {
        return ctx.error(
            StatusCode::NOT_FOUND,
            "Not found",
            "That is neither a tag nor a digest.",
        );
    }
    let target = format!("/v2/{repo}/manifests/{reference}");
    let what = format!("{repo}:{reference}");
    let (headers, body, doc) = match ctx
        .get_json::<ManifestDoc>(&target, Some(MANIFEST_ACCEPT), &what)
        .await
    {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let digest = headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .filter(|d| valid_digest(d))
        .map(str::to_string)
        .unwrap_or_else(|| {
            use sha2::Digest as _;
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body)))
        });
    let media_type = doc
        .media_type
        .clone()
        .or_else(|| {
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let item = |d: Desc| pages::Item {
        label: d.platform.as_ref().and_then(platform_label),
        digest: d.digest,
        media_type: d.media_type.unwrap_or_default(),
        size: d.size,
        created: None,
    };
    let body_view = match doc.manifests {
        Some(children) => pages::Body::Index {
            manifests: children.into_iter().map(item).collect(),
        },
        None => {
            let config_type = doc.config.as_ref().and_then(|c| c.media_type.clone());
            let mut config = None;
            if let Some(c) = doc.config.as_ref().filter(|c| {
                is_image_config(c.media_type.as_deref())
                    && valid_digest(&c.digest)
                    && c.size <= MAX_CONFIG
            }) {
                let target = format!("/v2/{repo}/blobs/{}", c.digest);
                if let Ok((StatusCode::OK, _, bytes)) =
                    ctx.upstream(Method::GET, &target, None, None).await
                {
                    config = serde_json::from_slice::<ImageConfig>(&bytes)
                        .ok()
                        .map(|c| Box::new(config_view(c)));
                }
            }
            pages::Body::Image {
                config,
                config_type,
                layers: doc.layers.into_iter().map(item).collect(),
            }
        }
    };
    let referrers = {
        let target = format!("/v2/{repo}/referrers/{digest}");
        match ctx.upstream(Method::GET, &target, None, None).await {
            Ok((StatusCode::OK, _, bytes)) => serde_json::from_slice::<ManifestDoc>(&bytes)
                .ok()
                .and_then(|d| d.manifests)
                .unwrap_or_default()
                .into_iter()
                .map(|d| pages::Item {
                    label: d.artifact_type.clone(),
                    created: d
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("org.opencontainers.image.created").cloned()),
                    digest: d.digest,
                    media_type: d.media_type.unwrap_or_default(),
                    size: d.size,
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    let can_delete = ctx.may(repo, Action::Delete) && deletes_enabled(ctx, repo).await;
    let i = pages::Image {
        repo: repo.to_string(),
        tag: valid_tag(reference).then(|| reference.to_string()),
        digest,
        media_type,
        artifact_type: doc.artifact_type,
        manifest_size: body.len() as u64,
        body: body_view,
        referrers,
        can_delete,
    };
    ctx.page(StatusCode::OK, pages::image(&ctx.chrome(), &i))
}

/// Whether the registry takes deletes in this repository (deletes enabled, no mirror).
async fn deletes_enabled(ctx: &Ctx<'_>, repo: &str) -> bool {
    let target = format!("/v2/{repo}/tags/list?berth=info");
    match ctx.upstream(Method::GET, &target, None, None).await {
        Ok((StatusCode::OK, _, body)) => serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["deletes"].as_bool())
            .unwrap_or(false),
        _ => false,
    }
}

fn deletable<'a>(ctx: &Ctx<'_>, repo: &'a str) -> Result<&'a str, Box<Response<ProxyBody>>> {
    let repo = pullable(ctx, repo)?;
    if !ctx.may(repo, Action::Delete) {
        return Err(Box::new(ctx.error(
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!("You may not delete in {repo}."),
        )));
    }
    Ok(repo)
}

fn confirm_delete(ctx: &Ctx<'_>, req: &Request<Incoming>, repo: &str) -> Response<ProxyBody> {
    let repo = match deletable(ctx, repo) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let q = query_params(req);
    let reference = param(&q, "ref").unwrap_or("");
    if !valid_reference(reference) {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "Name a tag or a digest to delete.",
        );
    }
    ctx.page(
        StatusCode::OK,
        pages::confirm_delete(&ctx.chrome(), repo, reference, valid_tag(reference)),
    )
}

async fn delete(ctx: &Ctx<'_>, req: Request<Incoming>, repo: &str) -> Response<ProxyBody> {
    let (session, form) = match checked_form(ctx, req).await {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    let reference = param(&form, "ref").unwrap_or("");
    let repo = match deletable(ctx, repo) {
        Ok(r) => r,
        Err(resp) => {
            ctx.state.audit().record(&AuditEvent {
                user: Some(&session.user),
                client: ctx.client,
                action: "delete",
                repository: Some(repo),
                reference: Some(reference),
                status: resp.status().as_u16(),
                reason: Some("the access rules do not allow it (web interface)"),
            });
            return *resp;
        }
    };
    if !valid_reference(reference) {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "Name a tag or a digest to delete.",
        );
    }
    let target = format!("/v2/{repo}/manifests/{reference}");
    let (status, _, body) = match ctx.upstream(Method::DELETE, &target, None, None).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    ctx.state.audit().record(&AuditEvent {
        user: Some(&session.user),
        client: ctx.client,
        action: "delete",
        repository: Some(repo),
        reference: Some(reference),
        status: status.as_u16(),
        reason: None,
    });
    match status {
        StatusCode::ACCEPTED | StatusCode::OK | StatusCode::NO_CONTENT => {
            let q: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("deleted", reference)
                .finish();
            redirect(&format!("/ui/r/{repo}?{q}"))
        }
        StatusCode::METHOD_NOT_ALLOWED => ctx.error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Deletes are disabled",
            "This registry does not delete (storage.delete_enabled is off, or the repository is a mirror).",
        ),
        s => ctx.registry_error(s, &body, &format!("Deleting {repo}:{reference}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_next_pages_are_checked() {
        assert!(valid_tag("v1.2-rc_3"));
        assert!(!valid_tag("-x"));
        assert!(!valid_tag("a/b"));
        assert!(valid_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!valid_digest("sha256:xyz"));
        assert_eq!(safe_next("/ui/r/app"), "/ui/r/app");
        assert_eq!(safe_next("https://evil.example/"), "/ui/");
        assert_eq!(safe_next("//evil.example/ui/"), "/ui/");
        assert_eq!(safe_next("/ui/\\evil"), "/ui/");
    }

    #[test]
    fn only_this_origin_may_post() {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, "https://r.test:5043".parse().unwrap());
        assert!(same_origin(&h, "r.test:5043"));
        h.insert(header::ORIGIN, "https://evil.test".parse().unwrap());
        assert!(!same_origin(&h, "r.test:5043"));
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(!same_origin(&h, "r.test:5043"));
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(!same_origin(&h, "r.test:5043"));
    }
}
