//! Upstream connections kept open between requests, as Spin's outbound HTTP keeps them (a
//! pooled hyper client: 12 connects for 992 proxied HEADs, measured on Spin 4.0.2). Without a
//! pool every request pays a connect, and a TLS handshake on a real upstream, which Spin does
//! not: the test host's numbers would not stand for a deployment.
//!
//! A connection goes back to the pool when its response body has been read to the end (at once
//! for a body the headers say is empty); a body dropped early takes its connection with it.
//! The timeouts are wasmtime-wasi-http's `default_send_request`'s: connect, first byte,
//! between bytes.

use http::uri::Scheme;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// Idle connections kept per origin: Spin's (hyper-util's) default keeps any number; a bound
/// keeps a burst of concurrent requests from holding sockets forever.
const IDLE_PER_ORIGIN: usize = 32;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

type Sender = SendRequest<WasiBody>;

/// `(tls, host:port)`.
type Origin = (bool, String);

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Origin, Vec<Sender>>>,
    /// Connections opened since the host started, for the benchmarks.
    connects: AtomicU64,
}

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Stream for T {}

impl Pool {
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    pub async fn send(
        self: Arc<Self>,
        mut req: Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<Response<WasiBody>, Error> {
        let uri = req.uri();
        let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
        let tls = uri.scheme() == Some(&Scheme::HTTPS);
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let origin = (tls, format!("{}:{port}", authority.host()));
        let timeout = |t: Option<Duration>| t.unwrap_or(DEFAULT_TIMEOUT).max(Duration::new(0, 1));
        let connect_timeout = timeout(options.and_then(|o| o.connect_timeout));
        let first_byte_timeout = timeout(options.and_then(|o| o.first_byte_timeout));
        let between_bytes_timeout = timeout(options.and_then(|o| o.between_bytes_timeout));
        // The request line carries the path only: the authority is in `Host`.
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        *req.uri_mut() = http::Uri::builder()
            .path_and_query(path)
            .build()
            .map_err(|_| Error::HttpRequestUriInvalid)?;

        let mut sender = match self.checkout(&origin).await {
            Some(s) => s,
            None => self.connect(&origin, connect_timeout).await?,
        };
        let sent = tokio::time::timeout(first_byte_timeout, async {
            match sender.try_send_request(req).await {
                Ok(res) => Ok(res),
                // The idle connection closed as it was taken: the request never left, so it
                // goes out once more on a new connection.
                Err(mut e) => match e.take_message() {
                    Some(req) => {
                        sender = self.connect(&origin, connect_timeout).await?;
                        sender.send_request(req).await.map_err(Error::from)
                    }
                    None => Err(Error::from(e.into_error())),
                },
            }
        })
        .await
        .map_err(|_| Error::ConnectionReadTimeout)??;

        let (parts, incoming) = sent.into_parts();
        let mut timeout = tokio::time::interval(between_bytes_timeout);
        timeout.reset();
        let mut body = PooledBody {
            body: Some(incoming),
            timeout,
            back: Some((self.clone(), origin, sender)),
        };
        if body.is_end_stream() {
            body.give_back();
        }
        Ok(Response::from_parts(
            parts,
            http_body_util::BodyExt::boxed_unsync(body),
        ))
    }

    async fn checkout(&self, origin: &Origin) -> Option<Sender> {
        loop {
            let mut sender = self.idle.lock().ok()?.get_mut(origin)?.pop()?;
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn put_back(&self, origin: Origin, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            let list = idle.entry(origin).or_default();
            if list.len() < IDLE_PER_ORIGIN {
                list.push(sender);
            }
        }
    }

    async fn connect(&self, origin: &Origin, timeout: Duration) -> Result<Sender, Error> {
        let (tls, authority) = origin;
        let opened = async {
            let tcp = TcpStream::connect(authority.as_str())
                .await
                .map_err(Error::Connect)?;
            let _ = tcp.set_nodelay(true);
            let stream: Box<dyn Stream> = if *tls {
                Box::new(tls_connect(authority, tcp).await?)
            } else {
                Box::new(tcp)
            };
            http1::Builder::new()
                .handshake::<_, WasiBody>(TokioIo::new(stream))
                .await
                .map_err(Error::from)
        };
        let (sender, conn) = tokio::time::timeout(timeout, opened)
            .await
            .map_err(|_| Error::ConnectionTimeout)??;
        self.connects.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            // An upstream closing an idle connection is the normal end of one.
            let _ = conn.await;
        });
        Ok(sender)
    }
}

async fn tls_connect(
    authority: &str,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    use rustls::pki_types::ServerName;
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = match authority.parse::<std::net::SocketAddr>() {
        Ok(addr) => ServerName::from(addr.ip()),
        Err(_) => {
            let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
            ServerName::try_from(host.to_string()).map_err(Error::InvalidDnsNameError)?
        }
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(Error::Tls)
}

/// A response body that returns its connection to the pool once read to the end, and fails
/// when the upstream goes quiet for longer than the between-bytes timeout.
struct PooledBody {
    body: Option<Incoming>,
    timeout: tokio::time::Interval,
    back: Option<(Arc<Pool>, Origin, Sender)>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some((pool, origin, sender)) = self.back.take() {
            pool.put_back(origin, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.give_back();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.back = None;
                let e = if e.is_timeout() {
                    Error::HttpResponseTimeout
                } else {
                    Error::from(e)
                };
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.timeout.reset();
                if this.body.as_ref().is_some_and(Body::is_end_stream) {
                    this.give_back();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                std::task::ready!(this.timeout.poll_tick(cx));
                this.back = None;
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP/1.1 server that answers every request with `body` and counts connections.
    async fn server(body: &'static str) -> (String, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        let head = String::from_utf8_lossy(&buf[..n]).to_string();
                        let reply = if head.starts_with("HEAD") {
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                        } else {
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            )
                        };
                        if s.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), accepted)
    }

    fn request(method: &str, url: &str) -> Request<WasiBody> {
        Request::builder()
            .method(method)
            .uri(format!("{url}/v2/"))
            .header("host", url.trim_start_matches("http://"))
            .body(
                Empty::new()
                    .map_err(|_| Error::HttpProtocolError)
                    .boxed_unsync(),
            )
            .unwrap()
    }

    #[tokio::test]
    async fn connections_are_reused_once_a_body_is_read() {
        let (url, accepted) = server("hello").await;
        let pool = Arc::new(Pool::default());
        for method in ["GET", "HEAD", "GET", "HEAD", "GET"] {
            let res = pool
                .clone()
                .send(request(method, &url), None)
                .await
                .unwrap();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            let want: &[u8] = if method == "HEAD" { b"" } else { b"hello" };
            assert_eq!(body, want);
        }
        assert_eq!(pool.connects(), 1);
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_takes_its_connection_with_it() {
        let (url, _) = server("hello").await;
        let pool = Arc::new(Pool::default());
        let res = pool.clone().send(request("GET", &url), None).await.unwrap();
        drop(res);
        let res = pool.clone().send(request("GET", &url), None).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
        assert_eq!(pool.connects(), 2);
    }

    #[tokio::test]
    async fn a_request_body_is_sent() {
        let (url, _) = server("ok").await;
        let pool = Arc::new(Pool::default());
        let mut req = request("POST", &url);
        *req.body_mut() = Full::new(Bytes::from_static(b"x"))
            .map_err(|_| Error::HttpProtocolError)
            .boxed_unsync();
        let res = pool.send(req, None).await.unwrap();
        assert_eq!(res.status(), 200);
    }
}
