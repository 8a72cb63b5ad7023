//! A minimal HTTP/1.1 GET for the daemons' `/metrics`, `/healthz` and `/readyz`. One file,
//! used by the bench and (through `#[path]`) by the integration tests' `tests/common`.

/// GET `path` over plain HTTP/1.1; the whole response (status line, headers, body). Empty if
/// nothing listens.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    if s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .is_err()
    {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}
