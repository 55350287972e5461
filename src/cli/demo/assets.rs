//! The chat page and `freeim.js`, compiled into the binary so the demo works offline and
//! from a single file: no CDN, no asset directory to ship next to it.

use axum::http::header;
use axum::response::IntoResponse;

/// One embedded file.
struct Asset {
    content_type: &'static str,
    body: &'static str,
}

const INDEX_HTML: Asset = Asset { content_type: "text/html; charset=utf-8", body: include_str!("assets/index.html") };
const APP_JS: Asset = Asset { content_type: "text/javascript; charset=utf-8", body: include_str!("assets/app.js") };
const STYLE_CSS: Asset = Asset { content_type: "text/css; charset=utf-8", body: include_str!("assets/style.css") };
/// The reusable browser client; any FreeIM business app may serve or copy it.
const FREEIM_JS: Asset =
    Asset { content_type: "text/javascript; charset=utf-8", body: include_str!("assets/freeim.js") };

fn serve(asset: &'static Asset) -> impl IntoResponse {
    // `no-cache` (revalidate) rather than a long max-age: a new binary must show its new page.
    ([(header::CONTENT_TYPE, asset.content_type), (header::CACHE_CONTROL, "no-cache")], asset.body)
}

/// `GET /`
pub async fn index() -> impl IntoResponse {
    serve(&INDEX_HTML)
}
/// `GET /app.js`
pub async fn app_js() -> impl IntoResponse {
    serve(&APP_JS)
}
/// `GET /style.css`
pub async fn style_css() -> impl IntoResponse {
    serve(&STYLE_CSS)
}
/// `GET /freeim.js`
pub async fn freeim_js() -> impl IntoResponse {
    serve(&FREEIM_JS)
}
