//! API requests as the API server counts them
//! (`apiserver_request_total{verb,resource,subresource}` on its /metrics):
//! what a test or a bench reads to tell how many requests something cost,
//! whoever made them.

use std::collections::BTreeMap;

use crate::Error;

/// (verb, resource, subresource) → requests so far.
pub type Requests = BTreeMap<(String, String, String), f64>;

/// The value of `label` in a sample's `{...}` label set.
fn label<'a>(labels: &'a str, label: &str) -> &'a str {
    labels
        .split(',')
        .find_map(|pair| pair.strip_prefix(label)?.strip_prefix("=\""))
        .and_then(|value| value.strip_suffix('"'))
        .unwrap_or("")
}

/// The API server's request counters in a /metrics body, summed over
/// response codes (and every other label).
pub fn parse(body: &str) -> Result<Requests, Error> {
    let mut requests = Requests::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let key = (
            label(labels, "verb").to_string(),
            label(labels, "resource").to_string(),
            label(labels, "subresource").to_string(),
        );
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|e| Error::Setup(format!("apiserver_request_total: {e}: {line}")))?;
        *requests.entry(key).or_default() += value;
    }
    Ok(requests)
}

/// The API server's request counters now, read with an admin `client`.
pub async fn api_server_requests(client: &kube::Client) -> Result<Requests, Error> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .map_err(|e| Error::Setup(e.to_string()))?;
    let body = client.request_text(request).await.map_err(Error::Kube)?;
    parse(&body)
}

/// What changed between two readings, leaving out watches (their number
/// does not grow with changes), requests on no resource (discovery,
/// /metrics itself) and what `also_excluded` names as (verb, resource,
/// subresource).
pub fn made_between(
    before: &Requests,
    after: &Requests,
    also_excluded: &[(&str, &str, &str)],
) -> Requests {
    after
        .iter()
        .filter(|((verb, resource, subresource), _)| {
            !verb.starts_with("WATCH")
                && !resource.is_empty()
                && !also_excluded
                    .iter()
                    .any(|(v, r, s)| v == verb && r == resource && s == subresource)
        })
        .map(|(key, count)| (key.clone(), count - before.get(key).copied().unwrap_or(0.0)))
        .filter(|(_, made)| *made > 0.0)
        .collect()
}

/// The requests by verb alone.
pub fn by_verb(requests: &Requests) -> BTreeMap<String, f64> {
    let mut verbs = BTreeMap::new();
    for ((verb, _, _), count) in requests {
        *verbs.entry(verb.clone()).or_default() += count;
    }
    verbs
}

/// `VERB resource[/subresource]: count` for each entry.
pub fn entries(requests: &Requests) -> Vec<String> {
    requests
        .iter()
        .map(|((verb, resource, subresource), n)| {
            let subresource = if subresource.is_empty() {
                String::new()
            } else {
                format!("/{subresource}")
            };
            format!("{verb:<6} {resource}{subresource}: {n}")
        })
        .collect()
}

/// One line per entry, indented; "(none)" if empty.
pub fn table(requests: &Requests) -> String {
    if requests.is_empty() {
        return "  (none)".into();
    }
    entries(requests)
        .iter()
        .map(|entry| format!("  {entry}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn counters_sum_over_codes_and_differences_leave_out_watches() {
        let before = parse(
            "# TYPE apiserver_request_total counter\n\
             apiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"nodes\",scope=\"resource\",subresource=\"\",verb=\"GET\",version=\"v1\"} 2\n\
             apiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"nodes\",scope=\"cluster\",subresource=\"\",verb=\"WATCH\",version=\"v1\"} 1\n",
        )
        .unwrap();
        let after = parse(
            "apiserver_request_total{code=\"200\",resource=\"nodes\",subresource=\"\",verb=\"GET\"} 3\n\
             apiserver_request_total{code=\"404\",resource=\"nodes\",subresource=\"\",verb=\"GET\"} 4\n\
             apiserver_request_total{code=\"200\",resource=\"nodes\",subresource=\"\",verb=\"WATCH\"} 9\n\
             apiserver_request_total{code=\"200\",resource=\"nodes\",subresource=\"status\",verb=\"PATCH\"} 5\n\
             apiserver_request_total{code=\"200\",resource=\"\",subresource=\"\",verb=\"GET\"} 7\n",
        )
        .unwrap();
        let key = |v: &str, s: &str| (v.to_string(), "nodes".to_string(), s.to_string());
        assert_eq!(after[&key("GET", "")], 7.0);
        let made = made_between(&before, &after, &[("PATCH", "nodes", "status")]);
        assert_eq!(made, Requests::from([(key("GET", ""), 5.0)]));
        assert_eq!(by_verb(&made), BTreeMap::from([("GET".to_string(), 5.0)]));
        assert!(table(&made).contains("GET    nodes: 5"));
        assert_eq!(table(&Requests::new()), "  (none)");
    }
}
