//! The one timestamp every entry gets: where it comes from and its DOS encoding.

use super::FatError;
use crate::util::civil::{civil_from_days, days_from_civil};

/// Unix seconds of 1980-01-01 00:00:00 UTC, the first DOS date.
const DOS_EPOCH: i64 = 315_532_800;

/// Unix seconds of 2107-12-31 23:59:59 UTC, the last second FAT can store.
fn dos_last() -> i64 {
    days_from_civil(2108, 1, 1) * 86_400 - 1
}

/// The timestamp to use: the given one, else `SOURCE_DATE_EPOCH`, else 0.
pub fn resolve_timestamp(given: Option<i64>) -> Result<i64, FatError> {
    if let Some(t) = given {
        return Ok(t);
    }
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value
            .trim()
            .parse::<i64>()
            .map_err(|_| FatError::BadSourceDateEpoch { value }),
        Err(std::env::VarError::NotPresent) => Ok(0),
        Err(std::env::VarError::NotUnicode(v)) => Err(FatError::BadSourceDateEpoch {
            value: v.to_string_lossy().into_owned(),
        }),
    }
}

/// A volume serial number derived from the timestamp (a fixed 64-bit mix, so nearby
/// timestamps give unrelated-looking ids).
pub fn volume_id_from(timestamp: i64) -> u32 {
    let mut z = (timestamp as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z ^ (z >> 32)) as u32
}

/// A point in time as directory entries store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DosTime {
    /// Bits 15..9 year - 1980, 8..5 month, 4..0 day.
    pub date: u16,
    /// Bits 15..11 hour, 10..5 minute, 4..0 seconds / 2.
    pub time: u16,
    /// Hundredths of a second added to `time` (0 or 100: the odd second).
    pub hundredths: u8,
}

impl DosTime {
    /// Encode unix seconds (UTC), clamped to the range FAT can store.
    pub fn from_unix(unix: i64) -> DosTime {
        let t = unix.clamp(DOS_EPOCH, dos_last());
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
        DosTime {
            date: (((year - 1980) << 9) | (month << 5) | day) as u16,
            time: ((hour << 11) | (minute << 5) | (second / 2)) as u16,
            hundredths: ((second % 2) * 100) as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_bounds() {
        assert_eq!(days_from_civil(1980, 1, 1) * 86_400, DOS_EPOCH);
        let first = DosTime::from_unix(0);
        assert_eq!((first.date, first.time, first.hundredths), (0x21, 0, 0));
        let last = DosTime::from_unix(i64::MAX);
        // 2107-12-31 23:59:58 + 1 s
        assert_eq!(last.date, (127 << 9) | (12 << 5) | 31);
        assert_eq!(last.time, (23 << 11) | (59 << 5) | 29);
        assert_eq!(last.hundredths, 100);
    }

    #[test]
    fn known_date() {
        // 2024-02-29 13:45:07 UTC
        let t = DosTime::from_unix(1_709_214_307);
        assert_eq!(t.date, (44 << 9) | (2 << 5) | 29);
        assert_eq!(t.time, (13 << 11) | (45 << 5) | 3);
        assert_eq!(t.hundredths, 100);
        for d in [-1000, 0, 3652, 19_000, 50_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }
}
