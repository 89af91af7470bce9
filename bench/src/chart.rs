//! Charts of a scenario's results as SVG (`--charts DIR`), drawn with
//! plotters' SVG backend. Text is written as `<text>` elements that the
//! viewer lays out (plotters only estimates their size), so no font is read
//! or needed on the machine that draws.
//!
//! A chart is one or more [`Panel`]s side by side under a title; each panel
//! has its axes and named series. Scenarios build panels from the data they
//! already collect ([`latency_panel`] for a latency distribution) and hand
//! them to [`write`]; [`time_series`] is the one call for a curve over time.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Size of one panel in pixels.
const PANEL: (u32, u32) = (640, 440);
/// Height of the chart's title above the panels.
const TITLE_HEIGHT: u32 = 40;
/// Points of a latency curve, spread evenly over its percentile axis.
const CURVE_POINTS: usize = 300;
/// The deepest percentile a latency curve reaches: 99.9999%.
const MAX_NINES: f64 = 6.0;

/// How an axis maps values to positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Linear, from zero when no value is negative.
    Linear,
    /// Logarithmic (values must be positive; others are left out).
    Log,
    /// Percentiles given as fractions in [0, 1), spread by their nines:
    /// 90%, 99% and 99.9% are equally far apart, so the tail is as wide as
    /// the body.
    Nines,
}

#[derive(Debug, Clone)]
pub struct Axis {
    pub label: String,
    pub scale: Scale,
}

impl Axis {
    pub fn new(label: &str, scale: Scale) -> Axis {
        Axis {
            label: label.into(),
            scale,
        }
    }
}

/// A named line of `(x, y)` points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points,
        }
    }
}

/// One plot: a title, two axes and its series.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x: Axis,
    pub y: Axis,
    pub series: Vec<Series>,
}

/// Writes the chart to `dir/<file>.svg` when `dir` is given (`--charts`),
/// and says so; without `dir` nothing is drawn.
pub fn write(
    dir: Option<&Path>,
    file: &str,
    title: &str,
    panels: &[Panel],
) -> anyhow::Result<Option<PathBuf>> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    let svg = render(title, panels).with_context(|| format!("drawing the chart {file}"))?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the charts directory {}", dir.display()))?;
    let path = dir.join(format!("{file}.svg"));
    std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    println!("chart {}", path.display());
    Ok(Some(path))
}

/// One panel of `y_label` against seconds, e.g. sockets rejoined since a
/// restart, written as [`write`] does.
pub fn time_series(
    dir: Option<&Path>,
    file: &str,
    title: &str,
    y_label: &str,
    series: Vec<Series>,
) -> anyhow::Result<Option<PathBuf>> {
    let panel = Panel {
        title: String::new(),
        x: Axis::new("seconds", Scale::Linear),
        y: Axis::new(y_label, Scale::Linear),
        series,
    };
    write(dir, file, title, &[panel])
}

/// A latency distribution: for each named set of samples (microseconds),
/// the latency in ms (log scale) at each percentile, up to the slowest
/// sample (or 99.9999%).
pub fn latency_panel(title: &str, samples: &[(&str, &[u64])]) -> Panel {
    let series = samples
        .iter()
        .map(|(name, us)| {
            let mut sorted = us.to_vec();
            sorted.sort_unstable();
            Series::new(name, percentile_curve(&sorted))
        })
        .collect();
    Panel {
        title: title.into(),
        x: Axis::new("percentile", Scale::Nines),
        y: Axis::new("commit to client (ms, log scale)", Scale::Log),
        series,
    }
}

/// `(fraction, ms)` points of sorted microsecond samples, evenly spread in
/// nines from the fastest sample to the slowest.
fn percentile_curve(sorted: &[u64]) -> Vec<(f64, f64)> {
    if sorted.is_empty() {
        return Vec::new();
    }
    let n = sorted.len();
    let deepest = (n as f64).log10().min(MAX_NINES);
    (0..=CURVE_POINTS)
        .map(|i| {
            let q = 1.0 - 10f64.powf(-deepest * i as f64 / CURVE_POINTS as f64);
            // The last point of an uncapped curve is the slowest sample.
            let at = if i == CURVE_POINTS && deepest < MAX_NINES {
                n - 1
            } else {
                ((q * n as f64).ceil() as usize).clamp(1, n) - 1
            };
            (q, sorted[at] as f64 / 1000.0)
        })
        .collect()
}

/// The SVG text of the chart.
pub fn render(title: &str, panels: &[Panel]) -> anyhow::Result<String> {
    anyhow::ensure!(!panels.is_empty(), "a chart needs at least one panel");
    let mut svg = String::new();
    {
        let width = PANEL.0 * panels.len() as u32;
        let root =
            SVGBackend::with_string(&mut svg, (width, PANEL.1 + TITLE_HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (top, body) = root.split_vertically(TITLE_HEIGHT);
        top.titled(title, ("sans-serif", 22)).map_err(err)?;
        for (panel, area) in panels.iter().zip(body.split_evenly((1, panels.len()))) {
            draw_panel(&area, panel).with_context(|| format!("panel {:?}", panel.title))?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn draw_panel(area: &Area, panel: &Panel) -> anyhow::Result<()> {
    let xs = values(panel, |p| p.0, panel.x.scale);
    let ys = values(panel, |p| p.1, panel.y.scale);
    // Room above a linear y for the legend (see `legend_at`).
    let (x, y) = (
        range(&xs, panel.x.scale, 0.05),
        range(&ys, panel.y.scale, 0.3),
    );
    let x_log = panel.x.scale == Scale::Log;
    let y_log = panel.y.scale == Scale::Log;
    // Integer ends on a percentile axis: one tick per nine.
    let ticks = x.end as usize + 1;
    // plotters gives a log axis its own coordinate type: one call per pair.
    match (x_log, y_log) {
        (false, false) => draw_in(area, panel, ticks, x, y),
        (false, true) => draw_in(area, panel, ticks, x, y.log_scale()),
        (true, false) => draw_in(area, panel, ticks, x.log_scale(), y),
        (true, true) => draw_in(area, panel, ticks, x.log_scale(), y.log_scale()),
    }
}

fn draw_in<X, Y>(area: &Area, panel: &Panel, x_ticks: usize, x: X, y: Y) -> anyhow::Result<()>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut builder = ChartBuilder::on(area);
    if !panel.title.is_empty() {
        builder.caption(&panel.title, ("sans-serif", 16));
    }
    let mut chart = builder
        .margin(12)
        .margin_right(28)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    let x_label = |v: &f64| label(*v, panel.x.scale);
    let y_label = |v: &f64| label(*v, panel.y.scale);
    chart
        .configure_mesh()
        .x_desc(panel.x.label.as_str())
        .y_desc(panel.y.label.as_str())
        // A tick per nine on a percentile axis (90%, 99%, ...).
        .x_labels(match panel.x.scale {
            Scale::Nines => x_ticks,
            _ => 8,
        })
        .y_labels(8)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 14))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for (i, s) in panel.series.iter().enumerate() {
        let color = color(i);
        let points = s
            .points
            .iter()
            .filter(|&&(x, y)| usable(x, panel.x.scale) && usable(y, panel.y.scale))
            .map(|&(x, y)| (position(x, panel.x.scale), position(y, panel.y.scale)));
        // Few points (a value per size): mark each one.
        let marks = if s.points.len() <= 20 { 3 } else { 0 };
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)).point_size(marks))
            .map_err(err)?
            .label(s.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(legend_at(panel))
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Where the legend hides nothing: a percentile curve rises to the right,
/// leaving the lower right empty; over a linear y it goes in the room
/// [`range`] leaves above the highest value.
fn legend_at(panel: &Panel) -> SeriesLabelPosition {
    if panel.x.scale == Scale::Nines {
        SeriesLabelPosition::LowerRight
    } else {
        SeriesLabelPosition::UpperRight
    }
}

/// Series colours, told apart in print too: red, blue, green, orange, purple.
fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 5] = [
        RGBColor(214, 39, 40),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
    ];
    COLORS[i % COLORS.len()]
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Whether a value can be placed on the scale.
fn usable(v: f64, scale: Scale) -> bool {
    match scale {
        Scale::Linear => v.is_finite(),
        Scale::Log => v.is_finite() && v > 0.0,
        Scale::Nines => (0.0..1.0).contains(&v),
    }
}

/// Where a value goes on the axis's (linear or log) coordinate.
fn position(v: f64, scale: Scale) -> f64 {
    match scale {
        Scale::Linear | Scale::Log => v,
        Scale::Nines => -(1.0 - v).log10(),
    }
}

/// The positions of the panel's usable values on one axis.
fn values(panel: &Panel, pick: impl Fn(&(f64, f64)) -> f64, scale: Scale) -> Vec<f64> {
    panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(&pick))
        .filter(|&v| usable(v, scale))
        .map(|v| position(v, scale))
        .collect()
}

/// The axis range for these positions, with `room` (a fraction of the
/// span) above them on a linear scale.
fn range(vs: &[f64], scale: Scale, room: f64) -> Range<f64> {
    let lo = vs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return match scale {
            Scale::Log => 0.1..10.0,
            _ => 0.0..1.0,
        };
    }
    match scale {
        Scale::Linear => {
            let lo = lo.min(0.0);
            let hi = if hi > lo { hi } else { lo + 1.0 };
            lo..hi + (hi - lo) * room
        }
        Scale::Log => {
            let (lo, hi) = if hi > lo {
                (lo, hi)
            } else {
                (lo / 2.0, hi * 2.0)
            };
            lo / 1.25..hi * 1.25
        }
        // 1 - 10^-3 is 0.999 and back to 3.0000000000000004: not a fourth nine.
        Scale::Nines => 0.0..(hi - 1e-9).ceil().max(1.0),
    }
}

/// A tick's label.
fn label(v: f64, scale: Scale) -> String {
    match scale {
        Scale::Nines => {
            let percent = 100.0 * (1.0 - 10f64.powf(-v));
            let decimals = (v.ceil() as i64 - 2).max(0) as usize;
            format!("{percent:.decimals$}%")
        }
        Scale::Linear | Scale::Log => number(v),
    }
}

/// A number as a reader writes it: 10,000 and 1.5M, 0.25 and 12.
fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        trim(v)
    }
}

/// Up to three significant decimals, without trailing zeros.
fn trim(v: f64) -> String {
    let decimals = if v.abs() >= 10.0 {
        1
    } else if v.abs() >= 1.0 {
        2
    } else {
        3
    };
    let s = format!("{v:.decimals$}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that `svg` is well-formed XML as far as plotters writes it:
    /// one root element, every element closed in order, attributes quoted,
    /// no stray `<` or `&` in text. Returns the text of every `<text>`.
    fn well_formed(svg: &str) -> Result<Vec<String>, String> {
        let mut open: Vec<&str> = Vec::new();
        let mut texts = Vec::new();
        let mut roots = 0;
        let mut rest = svg.trim();
        if let Some(decl) = rest.strip_prefix("<?xml") {
            rest = &decl[decl.find("?>").ok_or("unclosed XML declaration")? + 2..];
        }
        while let Some(lt) = rest.find('<') {
            let text = &rest[..lt];
            if open.is_empty() && !text.trim().is_empty() {
                return Err(format!("text outside the root element: {text:?}"));
            }
            check_text(text)?;
            if open.last() == Some(&"text") {
                texts.push(unescape(text).trim().to_string());
            }
            let gt = rest[lt..].find('>').ok_or("unclosed tag")? + lt;
            let tag = &rest[lt + 1..gt];
            rest = &rest[gt + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                match open.pop() {
                    Some(o) if o == name.trim() => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let tag = tag.trim_end_matches('/');
            let name = tag.split_whitespace().next().ok_or("empty tag")?;
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':')
            {
                return Err(format!("bad element name {name:?}"));
            }
            check_attributes(&tag[name.len()..])?;
            if open.is_empty() {
                roots += 1;
            }
            if !self_closing {
                open.push(name);
            }
        }
        if !rest.trim().is_empty() {
            return Err(format!("text after the root element: {rest:?}"));
        }
        if !open.is_empty() {
            return Err(format!("unclosed elements {open:?}"));
        }
        if roots != 1 {
            return Err(format!("{roots} root elements"));
        }
        Ok(texts)
    }

    /// `name="value"` pairs, every value quoted and escaped.
    fn check_attributes(mut attrs: &str) -> Result<(), String> {
        loop {
            attrs = attrs.trim_start();
            if attrs.is_empty() {
                return Ok(());
            }
            let eq = attrs
                .find("=\"")
                .ok_or(format!("unquoted attribute in {attrs:?}"))?;
            let name = &attrs[..eq];
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(format!("bad attribute name {name:?}"));
            }
            let value_end = attrs[eq + 2..]
                .find('"')
                .ok_or("unclosed attribute value")?;
            let value = &attrs[eq + 2..eq + 2 + value_end];
            check_text(value)?;
            attrs = &attrs[eq + 2 + value_end + 1..];
        }
    }

    fn check_text(text: &str) -> Result<(), String> {
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..text[i..].find(';').map_or(text.len(), |e| i + e + 1)];
            if !["&lt;", "&gt;", "&amp;", "&quot;", "&apos;"].contains(&entity)
                && !entity.starts_with("&#")
            {
                return Err(format!("bad entity {entity:?}"));
            }
        }
        Ok(())
    }

    fn unescape(text: &str) -> String {
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&")
    }

    /// Renders and returns the `<text>` contents, failing on malformed SVG.
    fn texts(title: &str, panels: &[Panel]) -> Vec<String> {
        let svg = render(title, panels).unwrap();
        assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{svg}");
        let texts = well_formed(&svg).unwrap_or_else(|e| panic!("{e}:\n{svg}"));
        assert!(
            svg.contains("<polyline") || svg.contains("<path"),
            "no line drawn: {svg}"
        );
        texts
    }

    fn holds(texts: &[String], wanted: &[&str]) {
        for w in wanted {
            assert!(
                texts.iter().any(|t| t == w),
                "no <text> {w:?} among {texts:?}"
            );
        }
    }

    #[test]
    fn a_latency_distribution_has_its_series_and_axes() {
        let server: Vec<u64> = (1..=10_000).map(|i| 1_000 + i * 3).collect();
        let floor: Vec<u64> = (1..=10_000).rev().map(|i| 800 + i).collect();
        let recv: Vec<u64> = (1..=100).map(|i| 500 + i * 10).collect();
        let panels = [
            latency_panel(
                "64 changes/s",
                &[
                    ("server", &server),
                    ("floor", &floor),
                    ("pg_recvlogical", &recv),
                ],
            ),
            latency_panel(
                "640 changes/s & more",
                &[("server", &server), ("empty", &[])],
            ),
        ];
        let texts = texts("latency <500 sockets>", &panels);
        holds(
            &texts,
            &[
                "latency <500 sockets>",
                "64 changes/s",
                "640 changes/s & more",
                "server",
                "floor",
                "pg_recvlogical",
                "percentile",
                "commit to client (ms, log scale)",
                "90%",
                "99%",
                "99.9%",
            ],
        );
    }

    #[test]
    fn the_percentile_curve_runs_from_the_fastest_to_the_slowest_sample() {
        let sorted: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let curve = percentile_curve(&sorted);
        assert_eq!(curve.len(), CURVE_POINTS + 1);
        assert_eq!(curve[0], (0.0, 1.0));
        let (q, ms) = *curve.last().unwrap();
        assert!((q - 0.999).abs() < 1e-9, "{q}");
        assert_eq!(ms, 1000.0);
        let at_p99 = curve.iter().find(|(q, _)| *q >= 0.99 - 1e-9).unwrap();
        assert_eq!(at_p99.1, 990.0);
        assert!(curve
            .windows(2)
            .all(|w| w[0].1 <= w[1].1 && w[0].0 < w[1].0));
        assert!(percentile_curve(&[]).is_empty());
    }

    #[test]
    fn a_chart_against_sockets_has_both_panels() {
        let sizes = [1000.0, 5000.0, 10_000.0];
        let panel = |title: &str, y: &str, server: [f64; 3], floor: [f64; 3]| Panel {
            title: title.into(),
            x: Axis::new("sockets", Scale::Linear),
            y: Axis::new(y, Scale::Linear),
            series: vec![
                Series::new("server", sizes.iter().copied().zip(server).collect()),
                Series::new("floor", sizes.iter().copied().zip(floor).collect()),
            ],
        };
        let texts = texts(
            "fan-out",
            &[
                panel(
                    "CPU",
                    "CPU s per million messages",
                    [2.0, 2.5, 3.0],
                    [1.0, 1.1, 1.2],
                ),
                panel("rate", "messages/s", [4e5, 5e5, 6e5], [9e5, 1e6, 1.1e6]),
            ],
        );
        holds(
            &texts,
            &[
                "fan-out",
                "server",
                "floor",
                "sockets",
                "CPU s per million messages",
                "messages/s",
            ],
        );
        assert!(texts.iter().any(|t| t == "10k"), "{texts:?}");
    }

    #[test]
    fn a_time_series_is_one_call() {
        let dir = tempfile::tempdir().unwrap();
        let rejoined: Vec<(f64, f64)> = (0..=20)
            .map(|i| (i as f64 * 0.1, i as f64 * 500.0))
            .collect();
        let path = time_series(
            Some(dir.path()),
            "storm",
            "reconnect storm",
            "sockets rejoined",
            vec![Series::new("realtime-js 2.x", rejoined)],
        )
        .unwrap()
        .expect("a directory was given");
        assert_eq!(path, dir.path().join("storm.svg"));
        let svg = std::fs::read_to_string(&path).unwrap();
        let texts = well_formed(&svg).unwrap_or_else(|e| panic!("{e}:\n{svg}"));
        holds(
            &texts,
            &[
                "reconnect storm",
                "realtime-js 2.x",
                "seconds",
                "sockets rejoined",
            ],
        );
        assert_eq!(
            time_series(None, "storm", "t", "y", Vec::new()).unwrap(),
            None,
            "without --charts nothing is written"
        );
    }

    #[test]
    fn the_checker_refuses_malformed_svg() {
        assert!(well_formed("<svg><text>a</text></svg>").is_ok());
        assert!(well_formed("<svg><text>a</svg></text>").is_err());
        assert!(well_formed("<svg><g></svg>").is_err());
        assert!(well_formed("<svg x=1/>").is_err());
        assert!(well_formed("<svg><text>a & b</text></svg>").is_err());
        assert!(well_formed("<svg/><svg/>").is_err());
    }

    #[test]
    fn labels_read_as_numbers_and_percentiles() {
        assert_eq!(label(0.0, Scale::Nines), "0%");
        assert_eq!(label(1.0, Scale::Nines), "90%");
        assert_eq!(label(3.0, Scale::Nines), "99.9%");
        assert_eq!(label(10_000.0, Scale::Linear), "10k");
        assert_eq!(label(1_500_000.0, Scale::Linear), "1.5M");
        assert_eq!(label(0.25, Scale::Log), "0.25");
        assert_eq!(label(12.0, Scale::Log), "12");
    }
}
