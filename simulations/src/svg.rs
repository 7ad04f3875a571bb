//! A hand-written SVG plot of completion-time CDFs against the bound (log time axis, since
//! the naive baselines take orders of magnitude longer than the swarm).

use std::fmt::Write;

use crate::report::Report;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

pub fn cdf_plot(report: &Report) -> String {
    let strategies: Vec<_> = std::iter::once(&report.shoal)
        .chain(report.baselines.iter())
        .collect();
    let t_min = report.bound.t_min_s;
    let times = strategies
        .iter()
        .flat_map(|s| s.completion.cdf.iter().map(|p| p.0))
        .chain([t_min, report.bound.with_sites_s]);
    let (lo, hi) = times.fold((f64::INFINITY, 0.0f64), |(lo, hi), t| {
        (lo.min(t.max(1e-3)), hi.max(t))
    });
    let x0 = 10f64.powf((lo * 0.8).log10().floor());
    let x1 = 10f64.powf((hi * 1.2).log10().ceil());
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |t: f64| LEFT + plot_w * (t.max(x0).log10() - x0.log10()) / (x1.log10() - x0.log10());
    let y = |f: f64| TOP + plot_h * (1.0 - f);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="18" font-size="14">{}: completion-time CDF ({} hosts)</text>"#,
        report.scenario.name, report.shoal.completion.hosts
    );
    let _ = write!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
    );
    let mut decade = x0;
    while decade <= x1 * 1.0001 {
        for m in [1.0, 2.0, 5.0] {
            let t = decade * m;
            if t > x1 * 1.0001 {
                break;
            }
            let px = x(t);
            let _ = write!(
                svg,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + plot_h,
                TOP + plot_h + 16.0,
                format_seconds(t)
            );
        }
        decade *= 10.0;
    }
    for f in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let py = y(f);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{f}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">completion time (s, log scale)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0
    );
    let tx = x(t_min);
    let _ = write!(
        svg,
        r##"<line x1="{tx:.1}" y1="{TOP}" x2="{tx:.1}" y2="{:.1}" stroke="#000" stroke-dasharray="5,4"/>"##,
        TOP + plot_h
    );
    for (i, s) in strategies.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut points = String::new();
        let mut last = 0.0;
        for &(t, f) in &s.completion.cdf {
            let _ = write!(
                points,
                "{:.1},{:.1} {:.1},{:.1} ",
                x(t),
                y(last),
                x(t),
                y(f)
            );
            last = f;
        }
        let _ = write!(
            svg,
            r#"<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>"#
        );
        let ly = TOP + 20.0 + 20.0 * i as f64;
        let lx = WIDTH - RIGHT + 15.0;
        let _ = write!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            s.name
        );
    }
    let sites = report.bound.with_sites_s;
    if sites > t_min * 1.001 {
        let sx = x(sites);
        let ly = TOP + 40.0 + 20.0 * strategies.len() as f64;
        let lx = WIDTH - RIGHT + 15.0;
        let _ = write!(
            svg,
            r##"<line x1="{sx:.1}" y1="{TOP}" x2="{sx:.1}" y2="{:.1}" stroke="#888" stroke-dasharray="2,3"/><line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="#888" stroke-dasharray="2,3"/><text x="{:.1}" y="{:.1}">with sites {}</text>"##,
            TOP + plot_h,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            format_seconds(sites)
        );
    }
    let ly = TOP + 20.0 + 20.0 * strategies.len() as f64;
    let lx = WIDTH - RIGHT + 15.0;
    let _ = write!(
        svg,
        r##"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="#000" stroke-dasharray="5,4"/><text x="{:.1}" y="{:.1}">T_min {}</text></svg>"##,
        lx + 20.0,
        lx + 26.0,
        ly + 4.0,
        format_seconds(t_min)
    );
    svg.push('\n');
    svg
}

fn format_seconds(t: f64) -> String {
    if t >= 1.0 {
        format!("{t:.0}")
    } else {
        format!("{t}")
    }
}
