//! The report: a table on stdout, JSON, and an SVG plot of throughput and p99 against
//! concurrency for every workload.

use std::fmt::Write as _;

use serde::Serialize;

/// One workload at one level (closed loop) or one rate (open loop).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: String,
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Requests in flight (closed) or offered per second (open).
    pub level: u64,
    pub requests: u64,
    pub errors: u64,
    pub shed: u64,
    pub seconds: f64,
    pub throughput: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Throughput over `echo`'s at the same level and mode, when both ran.
    pub ratio_to_echo: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub name: String,
    pub wanted: String,
    pub measured: Option<f64>,
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Soak {
    pub seconds: f64,
    pub level: u64,
    pub requests: u64,
    pub errors: u64,
    /// Per appServer process: resident set size samples (KiB), first after warm-up.
    pub rss_kib: Vec<Vec<u64>>,
    /// Last sample minus first, per process, in KiB.
    pub rss_growth_kib: Vec<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub started: String,
    pub cores: usize,
    pub database: String,
    pub servers: u64,
    pub read_pool: (u16, u16),
    pub write_pool: (u16, u16),
    pub seed: Seed,
    pub rows: Vec<Row>,
    pub targets: Vec<Goal>,
    pub soak: Option<Soak>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Seed {
    pub users: u64,
    pub follows: u64,
    pub spews: u64,
    pub seconds: f64,
}

/// Fills each row's ratio to `echo` at the same mode and level.
pub fn ratios(rows: &mut [Row]) {
    let echo: Vec<(&'static str, u64, f64)> = rows
        .iter()
        .filter(|r| r.workload == "echo")
        .map(|r| (r.mode, r.level, r.throughput))
        .collect();
    for r in rows.iter_mut() {
        r.ratio_to_echo = echo
            .iter()
            .find(|(m, l, _)| *m == r.mode && *l == r.level)
            .map(|(_, _, t)| r.throughput / t);
    }
}

pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<6} {:>6} {:>9} {:>6} {:>6} {:>10} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "work",
        "mode",
        "level",
        "requests",
        "errors",
        "shed",
        "req/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "max µs",
        "÷echo"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<6} {:<6} {:>6} {:>9} {:>6} {:>6} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>6}",
            r.workload,
            r.mode,
            r.level,
            r.requests,
            r.errors,
            r.shed,
            r.throughput,
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.max_us,
            r.ratio_to_echo.map_or("-".into(), |x| format!("{x:.2}"))
        );
    }
    out
}

const COLOURS: &[&str] = &["#444444", "#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Two panels side by side: throughput (linear) and p99 (log) against the closed-loop
/// level (log2), one line per workload.
pub fn svg(rows: &[Row], title: &str) -> String {
    let closed: Vec<&Row> = rows.iter().filter(|r| r.mode == "closed").collect();
    let mut workloads: Vec<&str> = Vec::new();
    for r in &closed {
        if !workloads.contains(&r.workload.as_str()) {
            workloads.push(&r.workload);
        }
    }
    let levels: Vec<u64> = {
        let mut l: Vec<u64> = closed.iter().map(|r| r.level).collect();
        l.sort_unstable();
        l.dedup();
        l
    };
    let (w, h, pad) = (460.0, 300.0, 55.0);
    let x_of = |level: u64| -> f64 {
        let i = levels.iter().position(|l| *l == level).unwrap_or(0) as f64;
        pad + i * (w - 2.0 * pad) / (levels.len().max(2) - 1) as f64
    };
    let max_tp = closed.iter().map(|r| r.throughput).fold(1.0, f64::max) * 1.1;
    let (min_p99, max_p99) = closed.iter().fold((f64::MAX, 1.0_f64), |(lo, hi), r| {
        (lo.min(r.p99_us.max(1) as f64), hi.max(r.p99_us as f64))
    });
    let (lo, hi) = (
        min_p99.max(1.0).log10().floor(),
        (max_p99 * 1.2).log10().ceil(),
    );
    let y_tp = |v: f64| h - pad - v / max_tp * (h - 2.0 * pad);
    let y_p99 = |v: f64| h - pad - (v.max(1.0).log10() - lo) / (hi - lo).max(1.0) * (h - 2.0 * pad);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="16" font-size="13">{}</text>
"#,
        2.0 * w,
        h + 40.0,
        xml(title)
    );
    for (panel, label) in [(0.0, "throughput (req/s)"), (w, "p99 latency (µs, log)")] {
        let _ = write!(
            s,
            r#"<g transform="translate({panel},20)">
<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="black"/>
<text x="{cx}" y="{ty}" text-anchor="middle">requests in flight</text>
<text x="12" y="{cy}" transform="rotate(-90 12 {cy})" text-anchor="middle">{label}</text>
"#,
            b = h - pad,
            r = w - pad,
            cx = w / 2.0,
            ty = h - 15.0,
            cy = h / 2.0,
        );
        for l in &levels {
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{l}</text>"#,
                x_of(*l),
                h - pad + 14.0
            );
        }
        if panel == 0.0 {
            for i in 0..=4 {
                let v = max_tp * f64::from(i) / 4.0;
                let _ = write!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="end">{:.0}</text>"#,
                    pad - 4.0,
                    y_tp(v) + 4.0,
                    v
                );
            }
        } else {
            let mut e = lo;
            while e <= hi {
                let _ = write!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="end">{:.0}</text>"#,
                    pad - 4.0,
                    y_p99(10_f64.powf(e)) + 4.0,
                    10_f64.powf(e)
                );
                e += 1.0;
            }
        }
        for (i, wl) in workloads.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let points: Vec<String> = closed
                .iter()
                .filter(|r| r.workload == *wl)
                .map(|r| {
                    let y = if panel == 0.0 {
                        y_tp(r.throughput)
                    } else {
                        y_p99(r.p99_us as f64)
                    };
                    format!("{:.1},{:.1}", x_of(r.level), y)
                })
                .collect();
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            );
            if panel == 0.0 {
                let _ = write!(
                    s,
                    r#"<text x="{}" y="{}" fill="{colour}">{}</text>"#,
                    pad + 10.0,
                    pad + 14.0 * i as f64,
                    xml(wl)
                );
            }
        }
        s.push_str("</g>\n");
    }
    s.push_str("</svg>\n");
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
