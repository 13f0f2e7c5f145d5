//! The table of script run times printed at the end of a build.

use std::fmt::Write;
use std::time::Duration;

use super::ScriptTiming;

const NAME_WIDTH: usize = 48;

/// Per phase (in the order phases first ran): the phase total, then each
/// script as `element/script` with its seconds; a grand total last.
pub fn timing_table(timings: &[ScriptTiming]) -> String {
    let mut phases: Vec<(&str, Vec<&ScriptTiming>)> = Vec::new();
    for timing in timings {
        match phases.iter_mut().find(|(name, _)| *name == timing.phase) {
            Some((_, list)) => list.push(timing),
            None => phases.push((&timing.phase, vec![timing])),
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "{:<NAME_WIDTH$} {:>10}", "Phase / script", "Seconds");
    let mut total = Duration::ZERO;
    for (phase, list) in &phases {
        let phase_total: Duration = list.iter().map(|t| t.duration).sum();
        total += phase_total;
        let _ = writeln!(
            out,
            "{:<NAME_WIDTH$} {:>10.3}",
            format!("{phase}.d"),
            phase_total.as_secs_f64()
        );
        for t in list {
            let name = format!("  {}/{}", t.element, t.script);
            let _ = writeln!(
                out,
                "{name:<NAME_WIDTH$} {:>10.3}",
                t.duration.as_secs_f64()
            );
        }
    }
    let _ = writeln!(
        out,
        "{:<NAME_WIDTH$} {:>10.3}",
        "Total",
        total.as_secs_f64()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(phase: &str, element: &str, script: &str, millis: u64) -> ScriptTiming {
        ScriptTiming {
            element: element.into(),
            phase: phase.into(),
            script: script.into(),
            duration: Duration::from_millis(millis),
        }
    }

    #[test]
    fn groups_by_phase_in_first_run_order_with_totals() {
        let table = timing_table(&[
            timing("root", "busybox-minimal", "10-unpack", 1500),
            timing("install", "base", "10-users", 250),
            timing("root", "base", "90-late", 500),
            timing("install", "vm", "50-grub", 1000),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        let cells: Vec<(String, String)> = lines
            .iter()
            .map(|l| {
                let (name, secs) = l.rsplit_once(' ').unwrap();
                (name.trim().to_string(), secs.to_string())
            })
            .collect();
        let expected = [
            ("Phase / script", "Seconds"),
            ("root.d", "2.000"),
            ("busybox-minimal/10-unpack", "1.500"),
            ("base/90-late", "0.500"),
            ("install.d", "1.250"),
            ("base/10-users", "0.250"),
            ("vm/50-grub", "1.000"),
            ("Total", "3.250"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(cells, expected);
    }
}
