//! Results: a small JSON value with a hand-written serializer (no JSON crate), and a
//! [`Report`] that renders the same figures as a markdown summary and as a JSON document.

use std::fmt::Write as _;

#[derive(Debug, Clone)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl From<bool> for Json {
    fn from(v: bool) -> Self {
        Json::Bool(v)
    }
}
impl From<u64> for Json {
    fn from(v: u64) -> Self {
        Json::UInt(v)
    }
}
impl From<usize> for Json {
    fn from(v: usize) -> Self {
        Json::UInt(v as u64)
    }
}
impl From<u32> for Json {
    fn from(v: u32) -> Self {
        Json::UInt(v as u64)
    }
}
impl From<i64> for Json {
    fn from(v: i64) -> Self {
        Json::Int(v)
    }
}
impl From<f64> for Json {
    fn from(v: f64) -> Self {
        Json::Num(v)
    }
}
impl From<&str> for Json {
    fn from(v: &str) -> Self {
        Json::Str(v.to_string())
    }
}
impl From<String> for Json {
    fn from(v: String) -> Self {
        Json::Str(v)
    }
}
impl<T: Into<Json>> From<Option<T>> for Json {
    fn from(v: Option<T>) -> Self {
        v.map(Into::into).unwrap_or(Json::Null)
    }
}
impl<T: Into<Json>> From<Vec<T>> for Json {
    fn from(v: Vec<T>) -> Self {
        Json::Arr(v.into_iter().map(Into::into).collect())
    }
}

/// JSON string escaping (RFC 8259 §7).
pub fn escape_json(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Json {
    pub fn obj() -> Json {
        Json::Obj(Vec::new())
    }

    /// Builder-style insert for `Obj` (no-op on other variants).
    pub fn with(mut self, key: &str, v: impl Into<Json>) -> Json {
        if let Json::Obj(items) = &mut self {
            items.push((key.to_string(), v.into()));
        }
        self
    }

    pub fn write(&self, out: &mut String, indent: usize) {
        let pad = |out: &mut String, n: usize| {
            out.push('\n');
            for _ in 0..n {
                out.push_str("  ");
            }
        };
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Json::UInt(i) => {
                let _ = write!(out, "{i}");
            }
            Json::Num(f) => {
                if f.is_finite() {
                    // Six significant decimals are plenty and keep the file readable.
                    let r = (f * 1e6).round() / 1e6;
                    if r == r.trunc() && r.abs() < 1e15 {
                        let _ = write!(out, "{}", r as i64);
                    } else {
                        let _ = write!(out, "{r}");
                    }
                } else {
                    out.push_str("null");
                }
            }
            Json::Str(s) => escape_json(s, out),
            Json::Arr(items) => {
                // Arrays of scalars stay on one line.
                let scalar = items
                    .iter()
                    .all(|v| !matches!(v, Json::Arr(_) | Json::Obj(_)));
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                        if scalar {
                            out.push(' ');
                        }
                    }
                    if !scalar {
                        pad(out, indent + 1);
                    }
                    v.write(out, indent + 1);
                }
                if !scalar && !items.is_empty() {
                    pad(out, indent);
                }
                out.push(']');
            }
            Json::Obj(items) => {
                out.push('{');
                for (i, (k, v)) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    pad(out, indent + 1);
                    escape_json(k, out);
                    out.push_str(": ");
                    v.write(out, indent + 1);
                }
                if !items.is_empty() {
                    pad(out, indent);
                }
                out.push('}');
            }
        }
    }

    pub fn to_string_pretty(&self) -> String {
        let mut s = String::new();
        self.write(&mut s, 0);
        s.push('\n');
        s
    }
}

/// One figure: a stable JSON key (unit in the name), a label and unit for the table.
#[derive(Debug, Clone)]
pub struct Metric {
    pub key: String,
    pub label: String,
    pub value: Json,
    pub unit: String,
}

/// What a scenario produced. Metrics are grouped into titled sections for the markdown
/// table; in JSON they are one flat object keyed by `key`.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: String,
    params: Vec<(String, Json)>,
    sections: Vec<(String, Vec<Metric>)>,
    extra: Vec<(String, Json)>,
    /// (alias, key): JSON-only second names of metrics.
    aliases: Vec<(String, String)>,
    notes: Vec<String>,
    /// Problems (failed logins, losses, ...): listed in both outputs.
    pub problems: Vec<String>,
}

impl Report {
    pub fn new(scenario: &str) -> Self {
        Report {
            scenario: scenario.to_string(),
            params: Vec::new(),
            sections: Vec::new(),
            extra: Vec::new(),
            aliases: Vec::new(),
            notes: Vec::new(),
            problems: Vec::new(),
        }
    }

    pub fn param(&mut self, key: &str, v: impl Into<Json>) {
        self.params.push((key.to_string(), v.into()));
    }

    /// Start a new section of the table; following metrics go into it.
    pub fn section(&mut self, title: &str) {
        self.sections.push((title.to_string(), Vec::new()));
    }

    pub fn metric(&mut self, key: &str, label: &str, v: impl Into<Json>, unit: &str) {
        if self.sections.is_empty() {
            self.section("Results");
        }
        let m = Metric {
            key: key.to_string(),
            label: label.to_string(),
            value: v.into(),
            unit: unit.to_string(),
        };
        self.sections.last_mut().expect("section").1.push(m);
    }

    /// Extra JSON-only data (timelines, per-pair details, error breakdowns).
    pub fn extra(&mut self, key: &str, v: impl Into<Json>) {
        self.extra.push((key.to_string(), v.into()));
    }

    /// Also publish metric `key` under `alias` in the JSON `metrics` (not in the table), for
    /// scripts that compare servers by a scenario-neutral name.
    pub fn alias(&mut self, alias: &str, key: &str) {
        self.aliases.push((alias.to_string(), key.to_string()));
    }

    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }

    pub fn problem(&mut self, s: impl Into<String>) {
        self.problems.push(s.into());
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        self.sections
            .iter()
            .flat_map(|(_, m)| m.iter())
            .find(|m| m.key == key)
            .map(|m| &m.value)
    }

    pub fn to_json(&self) -> Json {
        let mut metrics = Vec::new();
        for (_, ms) in &self.sections {
            for m in ms {
                metrics.push((m.key.clone(), m.value.clone()));
            }
        }
        for (alias, key) in &self.aliases {
            if let Some(v) = self.get(key) {
                metrics.push((alias.clone(), v.clone()));
            }
        }
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut root = Json::obj()
            .with("tool", "starling-bench")
            .with("version", env!("CARGO_PKG_VERSION"))
            .with("scenario", self.scenario.as_str())
            .with("timestamp_unix", ts)
            .with("ok", self.problems.is_empty())
            .with("params", Json::Obj(self.params.clone()))
            .with("metrics", Json::Obj(metrics));
        for (k, v) in &self.extra {
            root = root.with(k, v.clone());
        }
        root.with("problems", self.problems.clone())
            .with("notes", self.notes.clone())
    }

    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "## starling-bench: {}\n", self.scenario);
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={}", md_value(v)))
            .collect();
        let _ = writeln!(s, "Parameters: {}\n", params.join(", "));
        let _ = writeln!(s, "| Metric | Value | Unit |");
        let _ = writeln!(s, "| --- | ---: | --- |");
        for (title, ms) in &self.sections {
            if ms.is_empty() {
                continue;
            }
            let _ = writeln!(s, "| **{}** | | |", md_escape(title));
            for m in ms {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} |",
                    md_escape(&m.label),
                    md_escape(&md_value(&m.value)),
                    md_escape(&m.unit)
                );
            }
        }
        if !self.problems.is_empty() {
            let _ = writeln!(s, "\n**Problems:**\n");
            for p in &self.problems {
                let _ = writeln!(s, "- {p}");
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\nNotes:\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Human formatting: integers as is, floats with precision by magnitude.
pub fn md_value(v: &Json) -> String {
    match v {
        Json::Null => "n/a".into(),
        Json::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Json::Int(i) => i.to_string(),
        Json::UInt(u) => u.to_string(),
        Json::Num(f) if !f.is_finite() => "n/a".into(),
        Json::Num(f) => {
            let a = f.abs();
            if a >= 10_000.0 {
                format!("{f:.0}")
            } else if a >= 100.0 {
                format!("{f:.1}")
            } else if a >= 1.0 {
                format!("{f:.2}")
            } else {
                format!("{f:.3}")
            }
        }
        Json::Str(s) => s.clone(),
        Json::Arr(a) => a.iter().map(md_value).collect::<Vec<_>>().join(", "),
        Json::Obj(_) => "{…}".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_and_formats() {
        let j = Json::obj()
            .with("s", "a\"b\\c\n\u{1}")
            .with("n", 1.5)
            .with("i", 3u64)
            .with("nan", f64::NAN)
            .with("a", vec![1u64, 2]);
        let s = j.to_string_pretty();
        assert!(s.contains(r#""s": "a\"b\\c\n\u0001""#), "{s}");
        assert!(s.contains(r#""n": 1.5"#));
        assert!(s.contains(r#""nan": null"#));
        assert!(s.contains(r#""a": [1, 2]"#));
    }

    #[test]
    fn aliases_are_json_only() {
        let mut r = Report::new("t");
        r.metric("logins_per_s", "Login rate", 2.5, "logins/s");
        r.alias("logins_per_sec", "logins_per_s");
        r.alias("missing_alias", "no_such_metric");
        let j = r.to_json().to_string_pretty();
        assert!(j.contains(r#""logins_per_s": 2.5"#), "{j}");
        assert!(j.contains(r#""logins_per_sec": 2.5"#), "{j}");
        assert!(!j.contains("missing_alias"), "{j}");
        assert!(!r.to_markdown().contains("logins_per_sec"));
    }
}
