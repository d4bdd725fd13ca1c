//! The metrics text both binaries serve.

/// OpenMetrics text, as `prometheus-client` writes it, in the classic
/// Prometheus text format (0.0.4), which every Prometheus scrapes: a counter
/// family is named with its `_total` suffix, as its samples are, and the
/// OpenMetrics-only `# UNIT` and `# EOF` lines go. Enough for the kinds the
/// binaries export (counters, gauges, histograms).
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::classic_text;

    #[test]
    fn counters_are_named_with_their_suffix_and_openmetrics_lines_go() {
        let open = "# HELP a_writes Writes.\n# TYPE a_writes counter\n# UNIT a_writes bytes\n\
                    a_writes_total 3\n# HELP b Gauge.\n# TYPE b gauge\nb 1\n# EOF\n";
        assert_eq!(
            classic_text(open),
            "# HELP a_writes_total Writes.\n# TYPE a_writes_total counter\na_writes_total 3\n\
             # HELP b Gauge.\n# TYPE b gauge\nb 1\n"
        );
    }
}
