//! The HTTP endpoint Prometheus scrapes.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use super::{Metrics, MetricsError};

/// OpenMetrics, because that is what `prometheus_client`'s text encoder
/// writes (`# EOF`, `# UNIT`, counter families named without `_total`, the
/// `info` type); under the 0.0.4 text type Prometheus would misread them.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a scrape waits for the main loop to refresh the gauges before
/// it serves the last values.
const REFRESH_WAIT: Duration = Duration::from_secs(1);

/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the metrics listener, with an error that names the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Asks the main loop to refresh the gauges and waits for it, at most
/// [`REFRESH_WAIT`]; a busy or gone loop leaves the last values in place.
async fn refresh_gauges(refresh: &mpsc::Sender<oneshot::Sender<()>>) {
    let (done, answered) = oneshot::channel();
    let ask = async {
        refresh.send(done).await.ok()?;
        answered.await.ok()
    };
    match tokio::time::timeout(REFRESH_WAIT, ask).await {
        Ok(Some(())) => {}
        Ok(None) => tracing::debug!("metrics: the main loop is gone; serving the last values"),
        Err(_) => tracing::debug!(
            "metrics: the main loop did not refresh within {REFRESH_WAIT:?}; serving the last values"
        ),
    }
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

async fn handle(
    req: Request<Incoming>,
    metrics: &Metrics,
    refresh: &mpsc::Sender<oneshot::Sender<()>>,
) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = response(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET and HEAD\n".into(),
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/metrics" => {
            refresh_gauges(refresh).await;
            response(StatusCode::OK, CONTENT_TYPE, metrics.encode())
        }
        "/" => response(
            StatusCode::OK,
            PLAIN,
            "guard: memory guard. Prometheus metrics are at /metrics\n".into(),
        ),
        _ => response(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: guard serves /metrics\n".into(),
        ),
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped. Each
/// connection runs in its own task; its errors are logged, never fatal.
/// Each scrape first sends a oneshot over `refresh`: the main loop answers it
/// after calling [`Metrics::set_cgroups`] (and [`Metrics::set_bpf`]).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    refresh: mpsc::Sender<oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and the like pass; do not spin while they last.
                tracing::warn!(error = %e, "metrics: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let http = http.clone();
        let metrics = metrics.clone();
        let refresh = refresh.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let metrics = metrics.clone();
                let refresh = refresh.clone();
                async move { Ok::<_, Infallible>(handle(req, &metrics, &refresh).await) }
            });
            if let Err(e) = http.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%peer, error = %e, "metrics: connection failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::metrics::tests::{cgroup, value_of};

    /// A raw HTTP/1.1 GET: (status line, lower-cased head, body).
    async fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        conn.write_all(req.as_bytes()).await.expect("write");
        let mut raw = String::new();
        conn.read_to_string(&mut raw).await.expect("read");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
        let status = head.lines().next().unwrap_or_default().to_owned();
        (status, head.to_lowercase(), body.to_owned())
    }

    async fn start() -> (
        SocketAddr,
        Arc<Metrics>,
        mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(serve(listener, metrics.clone(), tx));
        (addr, metrics, rx)
    }

    #[tokio::test]
    async fn a_scrape_refreshes_the_gauges_and_serves_openmetrics() {
        let (addr, metrics, mut refresh) = start().await;
        let main_loop = metrics.clone();
        tokio::spawn(async move {
            while let Some(done) = refresh.recv().await {
                main_loop.set_cgroups(&[cgroup("/t.slice", 0, 4096, None)]);
                let _ = done.send(());
            }
        });

        let (status, head, body) = get(addr, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            head.contains(&format!("content-type: {CONTENT_TYPE}")),
            "{head}"
        );
        assert_eq!(
            value_of(
                &body,
                r#"guard_cgroup_memory_current_bytes{cgroup="/t.slice"}"#
            ),
            Some("4096"),
            "{body}"
        );

        let (status, _, body) = get(addr, "/nope").await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        assert!(body.contains("/metrics"), "{body}");
        let (status, _, body) = get(addr, "/").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.contains("/metrics"), "{body}");
    }

    #[tokio::test]
    async fn a_silent_main_loop_delays_a_scrape_by_about_a_second_only() {
        // The receiver lives but never answers.
        let (addr, metrics, _refresh) = start().await;
        metrics.set_cgroups(&[cgroup("/old.slice", 0, 1, None)]);
        let started = std::time::Instant::now();
        let (status, _, body) = tokio::time::timeout(Duration::from_secs(5), get(addr, "/metrics"))
            .await
            .expect("the scrape must not wait for the main loop forever");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.contains(r#"cgroup="/old.slice""#), "{body}");
        assert!(started.elapsed() >= Duration::from_millis(900));
    }

    #[tokio::test]
    async fn a_broken_connection_does_not_end_the_server() {
        let (addr, _metrics, refresh) = start().await;
        drop(refresh);
        let mut bad = tokio::net::TcpStream::connect(addr).await.expect("connect");
        bad.write_all(b"\x00\x01 not http at all\r\n\r\n")
            .await
            .expect("write");
        let mut sink = Vec::new();
        let _ = bad.read_to_end(&mut sink).await;

        let (status, _, body) = get(addr, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.contains("guard_up 1"), "{body}");
    }

    #[tokio::test]
    async fn a_taken_address_names_itself_in_the_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = bind(addr).await.expect_err("the port is taken");
        let msg = err.to_string();
        assert!(msg.contains(&addr.to_string()), "{msg}");
        assert!(msg.contains("--metrics-addr"), "{msg}");
    }
}
