//! A latency percentile plot, written as SVG by hand.
//!
//! The x axis is the percentile on the usual HdrHistogram scale (`1 / (1 - q)`, log), so the
//! tail gets as much room as the median; the y axis is latency on a log scale, so a 100 us
//! system and a 100 ms one fit on one plot. One curve per measured system.

use std::fmt::Write;

/// One curve: a label and `(quantile, latency_ns)` points, as from
/// [`crate::stats::percentile_curve`].
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, u64)>,
}

const W: f64 = 920.0;
const H: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 250.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// Escapes text for XML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// `1 / (1 - q)` in decades: 0 at the median's left end, 2 at p99, 3 at p99.9.
fn decades(q: f64) -> f64 {
    let q = q.clamp(0.0, 1.0 - 1e-9);
    (1.0 / (1.0 - q)).log10()
}

fn fmt_latency_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.0}ns")
    } else if ns < 1_000_000.0 {
        format!("{:.0}us", ns / 1_000.0)
    } else if ns < 1_000_000_000.0 {
        format!("{:.0}ms", ns / 1_000_000.0)
    } else {
        format!("{:.0}s", ns / 1_000_000_000.0)
    }
}

fn fmt_percentile(decade: u32) -> String {
    match decade {
        0 => "0%".to_string(),
        1 => "90%".to_string(),
        2 => "99%".to_string(),
        d => format!("99.{}%", "9".repeat(d as usize - 2)),
    }
}

/// Renders the plot.
pub fn percentile_plot(title: &str, subtitle: &str, series: &[Series]) -> String {
    let all = series.iter().flat_map(|s| s.points.iter());
    let max_x = all
        .clone()
        .map(|(q, _)| decades(*q))
        .fold(1.0f64, f64::max)
        .ceil()
        .max(1.0);
    let (lo, hi) = all
        .map(|(_, ns)| (*ns).max(1) as f64)
        .fold((f64::MAX, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let lo = if lo == f64::MAX { 1_000.0 } else { lo };
    let y_lo = lo.log10().floor();
    let y_hi = hi.log10().ceil().max(y_lo + 1.0);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x_of = |d: f64| LEFT + pw * d / max_x;
    let y_of = |ns: f64| TOP + ph * (1.0 - (ns.max(1.0).log10() - y_lo) / (y_hi - y_lo));

    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>
<text x="{}" y="22" font-size="16" text-anchor="middle">{}</text>
<text x="{}" y="40" fill="#555" text-anchor="middle">{}</text>"##,
        W / 2.0,
        escape(title),
        W / 2.0,
        escape(subtitle)
    );
    // Grid and ticks.
    let _ = writeln!(s, r##"<g stroke="#ddd" stroke-width="1">"##);
    for d in 0..=max_x as u32 {
        let x = x_of(d as f64);
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}"/>"#,
            TOP + ph
        );
    }
    for e in y_lo as i32..=y_hi as i32 {
        let y = y_of(10f64.powi(e));
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}"/>"#,
            LEFT + pw
        );
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(s, r#"<g text-anchor="middle">"#);
    for d in 0..=max_x as u32 {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            x_of(d as f64),
            TOP + ph + 18.0,
            escape(&fmt_percentile(d))
        );
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(s, r#"<g text-anchor="end">"#);
    for e in y_lo as i32..=y_hi as i32 {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT - 6.0,
            y_of(10f64.powi(e)) + 4.0,
            fmt_latency_ns(10f64.powi(e))
        );
    }
    let _ = writeln!(s, "</g>");
    // Axes and their labels.
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile (log scale of 1/(1-p))</text>
<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">latency, post sent to message received (log scale)</text>"#,
        LEFT + pw / 2.0,
        H - 18.0,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    // Curves and legend.
    for (i, series) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        if !series.points.is_empty() {
            let mut d = String::new();
            for (j, (q, ns)) in series.points.iter().enumerate() {
                let _ = write!(
                    d,
                    "{}{:.1},{:.1} ",
                    if j == 0 { "M" } else { "L" },
                    x_of(decades(*q)),
                    y_of(*ns as f64)
                );
            }
            let _ = writeln!(
                s,
                r#"<path d="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                d.trim_end()
            );
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + pw + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/>
<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(&series.label)
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small well-formedness check: tags balance, attributes are quoted, text has no raw
    /// `<` or `&` that is not an entity.
    pub(crate) fn assert_well_formed(xml: &str) {
        let body = xml
            .strip_prefix(r#"<?xml version="1.0" encoding="UTF-8"?>"#)
            .expect("xml declaration");
        let mut stack: Vec<String> = Vec::new();
        let mut rest = body;
        let mut roots = 0;
        while let Some(start) = rest.find('<') {
            let text = &rest[..start];
            check_text(text);
            let end = rest[start..].find('>').expect("unclosed tag") + start;
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "'<' inside a tag: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().expect("close without open");
                assert_eq!(open, name.trim(), "mismatched close tag");
            } else {
                let self_closing = tag.ends_with('/');
                let inner = tag.trim_end_matches('/');
                let name = inner
                    .split_whitespace()
                    .next()
                    .expect("tag name")
                    .to_string();
                check_attributes(inner[name.len()..].trim());
                if stack.is_empty() {
                    roots += 1;
                }
                if !self_closing {
                    stack.push(name);
                }
            }
            rest = &rest[end + 1..];
        }
        check_text(rest);
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        assert_eq!(roots, 1, "one root element");
    }

    fn check_text(text: &str) {
        let mut t = text;
        while let Some(i) = t.find('&') {
            let semi = t[i..].find(';').expect("entity without ';'") + i;
            let entity = &t[i + 1..semi];
            assert!(
                matches!(entity, "amp" | "lt" | "gt" | "quot" | "apos"),
                "unknown entity {entity}"
            );
            t = &t[semi + 1..];
        }
    }

    fn check_attributes(mut attrs: &str) {
        while !attrs.is_empty() {
            let eq = attrs.find('=').expect("attribute without value");
            let name = attrs[..eq].trim();
            assert!(
                !name.is_empty() && !name.contains(char::is_whitespace),
                "bad attribute name {name:?}"
            );
            let after = &attrs[eq + 1..];
            assert!(after.starts_with('"'), "unquoted attribute {name}");
            let close = after[1..].find('"').expect("unterminated attribute") + 1;
            check_text(&after[1..close]);
            attrs = after[close + 1..].trim_start();
        }
    }

    #[test]
    fn plot_is_well_formed_svg() {
        let series = vec![
            Series {
                label: "switchboard <2 gateways> & co".into(),
                points: vec![
                    (0.0, 100_000),
                    (0.5, 300_000),
                    (0.99, 2_000_000),
                    (0.999, 9_000_000),
                ],
            },
            Series {
                label: "nats".into(),
                points: vec![(0.0, 50_000), (0.9, 80_000), (0.9999, 400_000)],
            },
            Series {
                label: "empty".into(),
                points: vec![],
            },
        ];
        let svg = percentile_plot("fanout \"1x1000\"", "2 cores", &series);
        assert_well_formed(&svg);
        assert!(svg.contains("<path"));
        assert!(svg.contains("percentile"));
        assert!(svg.contains("latency"));
        assert!(svg.contains("99.9%"));
        assert!(svg.contains("&lt;2 gateways&gt; &amp; co"));
        assert!(svg.contains("&quot;1x1000&quot;"));
    }

    #[test]
    fn plot_without_data_is_well_formed() {
        assert_well_formed(&percentile_plot("nothing", "", &[]));
    }

    #[test]
    fn checker_rejects_broken_xml() {
        for bad in [
            r#"<?xml version="1.0" encoding="UTF-8"?><svg><g></svg>"#,
            r#"<?xml version="1.0" encoding="UTF-8"?><svg a=1></svg>"#,
            r#"<?xml version="1.0" encoding="UTF-8"?><svg>a & b</svg>"#,
        ] {
            assert!(
                std::panic::catch_unwind(|| assert_well_formed(bad)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn percentile_labels() {
        assert_eq!(fmt_percentile(0), "0%");
        assert_eq!(fmt_percentile(1), "90%");
        assert_eq!(fmt_percentile(2), "99%");
        assert_eq!(fmt_percentile(4), "99.99%");
        assert_eq!(fmt_latency_ns(1_000_000.0), "1ms");
        assert_eq!(fmt_latency_ns(100_000.0), "100us");
    }
}
