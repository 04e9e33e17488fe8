//! The dashboard's files (`dashboard/` at the repository root), compiled
//! into the binary so a node serves its dashboard with no build step and no
//! files to deploy beside it.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::api::AppState;

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 5] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../dashboard/index.html"),
    },
    Asset {
        path: "/assets/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../dashboard/app.js"),
    },
    Asset {
        path: "/assets/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../dashboard/style.css"),
    },
    Asset {
        path: "/assets/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../dashboard/vendor/uPlot.iife.min.js"),
    },
    Asset {
        path: "/assets/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../dashboard/vendor/uPlot.min.css"),
    },
];

fn serve(asset: &'static Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            // The files change only with the binary.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        asset.body,
    )
        .into_response()
}

/// Routes serving the dashboard.
pub fn routes() -> Router<AppState> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(asset.path, get(move || async move { serve(asset) }))
    })
}
