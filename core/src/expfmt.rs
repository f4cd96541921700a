//! Metrics exposition formats. prometheus-client writes OpenMetrics text, where a counter family is
//! named without its `_total` suffix (`# TYPE x counter`, sample `x_total`) and the body ends with
//! `# EOF`. Prometheus' classic text format (0.0.4), which `promtool check metrics` and older scrapers
//! read, names the family as its samples. Servers answer OpenMetrics to scrapers that ask for it and
//! the classic format otherwise.

/// Content type of OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an HTTP `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// Content negotiation for `/metrics`: the content type and body in the format the scraper's
/// `Accept` header asks for (OpenMetrics), else the classic text format (what promtool reads).
pub fn negotiate(accept: Option<&str>, openmetrics: &str) -> (&'static str, String) {
    if wants_openmetrics(accept) {
        (OPENMETRICS, openmetrics.to_string())
    } else {
        (PROMETHEUS_TEXT, openmetrics_to_prometheus_text(openmetrics))
    }
}

/// Rewrites OpenMetrics text as classic Prometheus text: counter families take their samples'
/// `_total` name in HELP and TYPE, `# UNIT` lines and the `# EOF` marker are dropped.
pub fn openmetrics_to_prometheus_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut pending_help: Option<&str> = None;
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            if let Some(h) = pending_help.replace(line) {
                out.push_str(h);
                out.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let renamed = kind == "counter" && !name.ends_with("_total");
            if let Some(h) = pending_help.take() {
                match (
                    renamed,
                    h.strip_prefix("# HELP ").and_then(|r| r.split_once(' ')),
                ) {
                    (true, Some((n, text))) if n == name => {
                        out.push_str(&format!("# HELP {name}_total {text}\n"))
                    }
                    _ => {
                        out.push_str(h);
                        out.push('\n');
                    }
                }
            }
            if renamed {
                out.push_str(&format!("# TYPE {name}_total counter\n"));
            } else {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        if let Some(h) = pending_help.take() {
            out.push_str(h);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some(h) = pending_help {
        out.push_str(h);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_counter_families_and_drops_openmetrics_markers() {
        let om = "# HELP a_reclaims Slices reclaimed.\n# TYPE a_reclaims counter\na_reclaims_total{reason=\"idle\"} 1\n# HELP b_ratio Util.\n# TYPE b_ratio gauge\n# UNIT b_ratio ratio\nb_ratio 0.5\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus_text(om),
            "# HELP a_reclaims_total Slices reclaimed.\n# TYPE a_reclaims_total counter\na_reclaims_total{reason=\"idle\"} 1\n# HELP b_ratio Util.\n# TYPE b_ratio gauge\nb_ratio 0.5\n"
        );
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }
}
