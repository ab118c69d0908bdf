//! The web dashboard, served at `/`: the jobs, and per job its operator
//! graph with live rates, watermarks and backpressure, checkpoints,
//! savepoints, module versions with an upgrade button, and recent logs.
//!
//! One HTML page, a stylesheet and a script (`dashboard/`), embedded in the
//! binary: no build step, and the page loads nothing from anywhere but this
//! server (its content security policy says so). The script only uses the
//! REST API: it polls the open GET endpoints, and sends the bearer token,
//! which the user enters once and the browser keeps, only with changes.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");

/// `data:` only for the empty icon; SVG is drawn inline by the script.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The assets change with the binary and carry no version in
            // their names: always revalidate.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
        ],
        body,
    )
}

/// The dashboard's routes: `/` and `/assets/*`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
