//! Plain HTTP on loopback: the coordinator's and the agents' endpoints, and
//! the metric values their Prometheus pages hold.

/// A plain HTTP/1.1 GET on loopback: the status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    http_request(addr, "GET", path, "").await
}

/// A plain HTTP/1.1 request on loopback: the status code and the body.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {response:.80}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// One sample's value from a Prometheus text endpoint (`/metrics` at `addr`).
pub async fn scrape_metric(addr: std::net::SocketAddr, name: &str) -> Result<f64, String> {
    let (_, body) = http_get(addr, "/metrics").await?;
    metric_value(&body, name)
}

/// The value of `name` in a classic-text scrape: one series when `name`
/// carries its labels (`family{label="x"}`), else the sum of every series
/// of the family (a labelled counter read as its total).
pub fn metric_value(body: &str, name: &str) -> Result<f64, String> {
    let exact = name.contains('{');
    let mut found = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = match rest.strip_prefix(' ') {
            Some(value) => value,
            // Another series of the family: `{labels} value`.
            None if !exact && rest.starts_with('{') => match rest.rsplit_once("} ") {
                Some((_, value)) => value,
                None => continue,
            },
            None => continue,
        };
        let value: f64 = value.trim().parse().map_err(|e| format!("{name}: {e}"))?;
        *found.get_or_insert(0.0) += value;
        if exact {
            break;
        }
    }
    found.ok_or_else(|| format!("{name} not in /metrics"))
}

#[cfg(test)]
mod tests {
    use super::metric_value;

    #[test]
    fn a_bare_family_name_sums_its_series_and_labels_pick_one() {
        let body = "# TYPE w counter\nw_total{kind=\"Node\"} 2\nw_total{kind=\"Event\"} 3\n\
                    w_total_other 7\ng 1.5\n";
        assert_eq!(metric_value(body, "w_total"), Ok(5.0));
        assert_eq!(metric_value(body, "w_total{kind=\"Event\"}"), Ok(3.0));
        assert_eq!(metric_value(body, "g"), Ok(1.5));
        assert!(metric_value(body, "missing").is_err());
    }
}
