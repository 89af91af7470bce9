//! What a scenario prints. Every figure is one line `figure <name> = <value>
//! <unit>`, every comparison with its reference one line `ratio <name> = <x>`,
//! so a reader (or the smoke test) can find them; the rest is commentary.

use std::time::Duration;

use crate::sys::CpuDelta;

pub fn section(title: &str) {
    println!("\n== {title} ==");
}

/// How many warnings the server logged during a scenario, and the first.
pub fn server_warnings(warnings: &[String]) {
    if let Some(first) = warnings.first() {
        note(&format!("server warnings ({}): {first}", warnings.len()));
    }
}

pub fn note(text: &str) {
    println!("   {text}");
}

pub fn figure(name: &str, value: f64, unit: &str) {
    println!("figure {name} = {} {unit}", human(value));
}

/// `value / reference`, with what the target was and whether it was met
/// (`None`: no target, the ratio is only informative).
pub fn ratio(name: &str, value: f64, reference: f64, what: &str, target: Option<Target>) {
    let r = if reference > 0.0 {
        value / reference
    } else {
        f64::NAN
    };
    let verdict = match target {
        None => String::new(),
        Some(Target::AtLeast(t)) => format!(
            " (target >= {t}: {})",
            if r >= t { "met" } else { "MISSED" }
        ),
        Some(Target::AtMost(t)) => format!(
            " (target <= {t}: {})",
            if r <= t { "met" } else { "MISSED" }
        ),
        Some(Target::Below(t)) => {
            format!(" (target < {t}: {})", if r < t { "met" } else { "MISSED" })
        }
    };
    println!("ratio {name} = {r:.3}  [{what}]{verdict}");
}

#[derive(Debug, Clone, Copy)]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
    /// Strictly less than.
    Below(f64),
}

/// One line of per-process CPU over a phase.
pub fn cpu(name: &str, wall: Duration, parts: &[(&str, CpuDelta)]) {
    let w = wall.as_secs_f64();
    let mut line = format!("cpu {name} over {w:.2} s wall:");
    for (who, d) in parts {
        line.push_str(&format!(
            " {who} {:.2} s ({:.0}% of a core);",
            d.seconds,
            100.0 * d.seconds / w.max(1e-9)
        ));
    }
    println!("{}", line.trim_end_matches(';'));
}

/// Percentiles of microsecond samples, sorted in place: p50, p99, p99.9, max.
pub fn percentiles(samples: &mut [u64]) -> Option<[f64; 4]> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i] as f64 / 1000.0
    };
    Some([
        at(0.50),
        at(0.99),
        at(0.999),
        *samples.last().unwrap() as f64 / 1000.0,
    ])
}

fn human(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
