//! `--break` points, as diskimage-builder's `break=`: `before-PHASE` and
//! `after-PHASE` open a shell around a phase, `after-error` after a failing
//! script. Several are given comma-separated or by repeating the flag.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakPoint {
    Before(String),
    After(String),
    AfterError,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown break point `{0}`: use before-PHASE, after-PHASE or after-error \
     (PHASE as in install, post-install, finalise)"
)]
pub struct UnknownBreakPoint(pub String);

fn is_phase_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl FromStr for BreakPoint {
    type Err = UnknownBreakPoint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let phase = |p: &str| p.strip_suffix(".d").unwrap_or(p).to_string();
        if s == "after-error" {
            Ok(BreakPoint::AfterError)
        } else if let Some(p) = s
            .strip_prefix("before-")
            .map(phase)
            .filter(|p| is_phase_name(p))
        {
            Ok(BreakPoint::Before(p))
        } else if let Some(p) = s
            .strip_prefix("after-")
            .map(phase)
            .filter(|p| is_phase_name(p))
        {
            Ok(BreakPoint::After(p))
        } else {
            Err(UnknownBreakPoint(s.to_string()))
        }
    }
}

impl fmt::Display for BreakPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakPoint::Before(p) => write!(f, "before-{p}"),
            BreakPoint::After(p) => write!(f, "after-{p}"),
            BreakPoint::AfterError => f.write_str("after-error"),
        }
    }
}

/// The set of break points of a build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BreakPoints(Vec<BreakPoint>);

impl BreakPoints {
    /// Parse `--break` values, each possibly a comma-separated list.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Self, UnknownBreakPoint> {
        let mut points = Vec::new();
        for value in values {
            for item in value.as_ref().split(',').filter(|i| !i.trim().is_empty()) {
                let point: BreakPoint = item.parse()?;
                if !points.contains(&point) {
                    points.push(point);
                }
            }
        }
        Ok(BreakPoints(points))
    }

    pub fn contains(&self, point: &BreakPoint) -> bool {
        self.0.contains(point)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dib_break_names() {
        let points =
            BreakPoints::parse(&["before-install,after-error", "after-finalise.d"]).unwrap();
        assert!(points.contains(&BreakPoint::Before("install".into())));
        assert!(points.contains(&BreakPoint::AfterError));
        assert!(points.contains(&BreakPoint::After("finalise".into())));
        assert!(!points.contains(&BreakPoint::Before("finalise".into())));
    }

    #[test]
    fn rejects_unknown_names() {
        for bad in ["during-install", "before-", "after-Install", "error"] {
            let err = BreakPoints::parse(&[bad]).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
