//! The accept loop: HTTP/1.1 over TCP, one access-log line per request, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::CONTENT_LENGTH;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::api::{App, Body};
use crate::linger::{lingering, RequestBody};

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long running requests may take to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(1);

fn header_u64(h: &http::HeaderMap, name: http::header::HeaderName) -> Option<u64> {
    h.get(name)?.to_str().ok()?.parse().ok()
}

async fn logged(
    app: Arc<App>,
    peer: std::net::SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| format!("r{}", REQUEST_SEQ.fetch_add(1, Ordering::Relaxed)));
    req.extensions_mut().insert(crate::api::RequestMeta {
        peer,
        id: request_id.clone(),
    });
    let bytes_in = header_u64(req.headers(), CONTENT_LENGTH);
    let expects_continue = req
        .headers()
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    // A body the handler leaves unread is thrown away in the background, so the error reaches the client and
    // the connection survives for its retry.
    // Requests are counted only when the metrics are served.
    let metrics = app
        .config
        .http
        .debug
        .prometheus
        .enabled
        .then(|| Arc::clone(app.store.metrics()));
    let handler = crate::api::handler_index(&path);
    let in_flight = metrics
        .as_ref()
        .map(|m| crate::metrics::InFlight::start(m, handler));
    let received = Arc::new(AtomicU64::new(0));
    let req = req.map(|b| {
        let body = RequestBody::new(b, expects_continue);
        // Bytes are counted only for the metrics.
        match metrics {
            Some(_) => body.counting(Arc::clone(&received)),
            None => body,
        }
    });
    let resp = app.handle(req).await;
    drop(in_flight);
    if let Some(metrics) = metrics {
        let bytes_out = if method == http::Method::HEAD {
            0
        } else {
            header_u64(resp.headers(), CONTENT_LENGTH).unwrap_or(0)
        };
        metrics.request_done(
            handler,
            &method,
            resp.status().as_u16(),
            started.elapsed(),
            received.load(Ordering::Relaxed),
            bytes_out,
        );
    }
    tracing::info!(
        target: "access",
        request_id = %request_id,
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        bytes_in = bytes_in.unwrap_or(0),
        bytes_out = header_u64(resp.headers(), CONTENT_LENGTH).unwrap_or(0),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    Ok(resp)
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets running requests finish (bounded).
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = service_fn(move |req| logged(app.clone(), peer, req));
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(256 * 1024)
            // Room for the forwarding headers berth-proxy adds to the (at most 100) fields it lets through.
            .max_headers(128);
        let conn = builder.serve_connection(TokioIo::new(lingering(stream)), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("shutdown grace period over; closing"),
    }
}
