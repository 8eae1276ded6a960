//! Reading the server's `/metrics`: a parser for the Prometheus text exposition format and
//! queries that sum a series over its labels.

use std::collections::BTreeMap;

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn matches(&self, filter: &[(&str, &str)]) -> bool {
        filter.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metrics line {line}: {reason}")]
pub struct MetricsError {
    pub line: usize,
    pub reason: &'static str,
}

impl Metrics {
    /// Parses the text format; comments and blank lines are skipped, timestamps ignored.
    pub fn parse(text: &str) -> Result<Self, MetricsError> {
        let mut samples = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason| MetricsError {
                line: i + 1,
                reason,
            };
            let name_end = line
                .find(|c: char| c == '{' || c.is_whitespace())
                .ok_or(err("no value"))?;
            let name = &line[..name_end];
            if name.is_empty() {
                return Err(err("empty name"));
            }
            let mut rest = &line[name_end..];
            let mut labels = Vec::new();
            if let Some(after_brace) = rest.strip_prefix('{') {
                let (parsed, after) = parse_labels(after_brace).ok_or(err("bad labels"))?;
                labels = parsed;
                rest = after;
            }
            let value = rest.split_whitespace().next().ok_or(err("no value"))?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().map_err(|_| err("bad value"))?,
            };
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        Ok(Self { samples })
    }

    /// Samples of a series whose labels include every `(key, value)` of `filter`.
    pub fn select<'a>(
        &'a self,
        name: &'a str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.matches(filter))
    }

    /// Sum of a series over all its labels.
    pub fn sum(&self, name: &str) -> f64 {
        self.sum_where(name, &[])
    }

    /// Sum of a series over the samples matching `filter`.
    pub fn sum_where(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.select(name, filter).map(|s| s.value).sum()
    }

    /// Sum of a series grouped by the value of one label.
    pub fn by_label(
        &self,
        name: &str,
        label: &str,
        filter: &[(&str, &str)],
    ) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.select(name, filter) {
            if let Some(v) = s.label(label) {
                *out.entry(v.to_string()).or_insert(0.0) += s.value;
            }
        }
        out
    }

    /// True when the page has at least one sample of the series.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

/// Parses `k="v",k2="v2"}` and returns the labels and the text after the closing brace.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((key, value));
        s = s[end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP sfu_packets_in_total UDP datagrams received.
# TYPE sfu_packets_in_total counter
sfu_packets_in_total{worker="0"} 10
sfu_packets_in_total{worker="1"} 5
sfu_sessions{worker="0",kind="publish"} 1
sfu_sessions{worker="1",kind="subscribe"} 3
sfu_sessions{worker="0",kind="subscribe"} 2
sfu_udp_dropped_total{worker="0",reason="malformed"} 7 1700000000000
weird{a="x\"y\\z",b="1"} 2.5e3
plain 42
"#;

    #[test]
    fn parses_and_sums() {
        let m = Metrics::parse(PAGE).expect("parses");
        assert_eq!(m.sum("sfu_packets_in_total"), 15.0);
        assert_eq!(m.sum_where("sfu_packets_in_total", &[("worker", "1")]), 5.0);
        assert_eq!(m.sum_where("sfu_sessions", &[("kind", "subscribe")]), 5.0);
        assert_eq!(
            m.sum_where("sfu_udp_dropped_total", &[("reason", "malformed")]),
            7.0
        );
        assert_eq!(m.sum("plain"), 42.0);
        assert_eq!(m.sum("absent"), 0.0);
        let by_worker = m.by_label("sfu_sessions", "worker", &[("kind", "subscribe")]);
        assert_eq!(by_worker.get("0"), Some(&2.0));
        assert_eq!(by_worker.get("1"), Some(&3.0));
        let weird = m.select("weird", &[]).next().expect("weird");
        assert_eq!(weird.label("a"), Some("x\"y\\z"));
        assert_eq!(weird.value, 2500.0);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Metrics::parse("x{a=\"1\" 3").is_err());
        assert!(Metrics::parse("x notanumber").is_err());
        assert!(Metrics::parse("lonely").is_err());
    }
}
