//! Log sequence numbers: the WAL positions that order transactions and checkpoints.
//! Parsed from and printed as PostgreSQL's `X/X` text form; compared as plain integers.

use std::fmt;
use std::str::FromStr;

/// A position in the PostgreSQL write-ahead log.
#[derive(Copy, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`: "no position"; the server reads it as "from the slot's confirmed position".
    pub const ZERO: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// The text was not an `X/X` LSN.
#[derive(Debug, thiserror::Error)]
#[error("invalid LSN {0:?}: expected the form X/X with hexadecimal halves, like 0/16B3748")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text_form() {
        for text in ["0/0", "0/16B3748", "1/0", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(text.parse::<Lsn>().unwrap().to_string(), text);
        }
        assert_eq!("0/16B3748".parse::<Lsn>().unwrap(), Lsn(0x16B3748));
        assert_eq!("2/10".parse::<Lsn>().unwrap(), Lsn((2 << 32) | 0x10));
    }

    #[test]
    fn rejects_malformed_text() {
        for text in ["", "0", "/1", "1/", "g/1", "1/2/3", "100000000/0"] {
            assert!(text.parse::<Lsn>().is_err(), "{text}");
        }
    }
}
