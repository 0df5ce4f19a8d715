//! The studio: the web interface at `/`, its files compiled into the binary. Its pages call the
//! public API from the browser (with the token, when one is set), so the files themselves carry
//! no data and are served without the token.

use axum::Router;
use axum::extract::Path as UrlPath;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{ApiError, AppState};

/// The studio's files: name, content type, contents.
const FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../studio/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../studio/style.css"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../studio/api.js"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../studio/app.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_str!("../../studio/chart.js"),
    ),
    (
        "runs.js",
        "text/javascript; charset=utf-8",
        include_str!("../../studio/runs.js"),
    ),
    (
        "new.js",
        "text/javascript; charset=utf-8",
        include_str!("../../studio/new.js"),
    ),
    (
        "compare.js",
        "text/javascript; charset=utf-8",
        include_str!("../../studio/compare.js"),
    ),
    (
        "chat.js",
        "text/javascript; charset=utf-8",
        include_str!("../../studio/chat.js"),
    ),
    (
        "personas.js",
        "text/javascript; charset=utf-8",
        include_str!("../../studio/personas.js"),
    ),
];

/// Whether a request path is one of the studio's (served without the token).
pub fn is_studio(path: &str) -> bool {
    path == "/" || path.starts_with("/studio/")
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { file("index.html") }))
        .route(
            "/studio/{name}",
            get(|UrlPath(name): UrlPath<String>| async move { file(&name) }),
        )
}

fn file(name: &str) -> Response {
    let Some((_, kind, body)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        return ApiError::NotFound(format!("no studio file {name:?}")).into_response();
    };
    let mut r = (*body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // Scripts and styles only from this server; no inline code, no framing by other sites.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Revalidated each load, so a new binary's studio replaces the old at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
