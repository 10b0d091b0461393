//! Exact fixed-point numbers: event quantities at scale 9 and usage/cost at
//! scale 12.
//!
//! Everything that is summed inside the dataflow is an `i128` at a fixed scale
//! and every operation is checked: a value that does not fit is an error, never
//! a wrap and never a rounding. `rust_decimal` (28 digits) cannot hold a day of
//! a 10^12-unit resource in unit-seconds at 12 fractional digits, an `i128`
//! holds it with room to spare.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Fractional digits of an event quantity.
pub const QUANTITY_SCALE: u32 = 9;
/// Fractional digits of usage and cost (ClickHouse `Decimal(38, 12)`).
pub const AMOUNT_SCALE: u32 = 12;
/// Quantities must be strictly below this many whole units.
pub const QUANTITY_LIMIT_UNITS: i128 = 1_000_000_000_000;
/// Largest magnitude `Decimal(38, 12)` can store, as a scaled integer, plus one.
pub const DECIMAL38_LIMIT: i128 = 100_000_000_000_000_000_000_000_000_000_000_000_000;

/// A non-negative quantity of an SKU with 9 fractional digits, below 10^12.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Quantity(i128);

/// Why a quantity string was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantityError {
    /// Not of the form `digits[.digits]` with an optional leading `-`.
    Syntax,
    /// Below zero.
    Negative,
    /// More than 9 fractional digits.
    Precision,
    /// 10^12 or more.
    OutOfRange,
}

impl Quantity {
    /// Zero units.
    pub const ZERO: Quantity = Quantity(0);

    /// The quantity as an integer count of 10^-9 units.
    pub fn nanos(self) -> i128 {
        self.0
    }

    /// Builds a quantity from 10^-9 units; `None` if negative or too large.
    pub fn from_nanos(nanos: i128) -> Option<Quantity> {
        (0..QUANTITY_LIMIT_UNITS * 10i128.pow(QUANTITY_SCALE)).contains(&nanos).then_some(Quantity(nanos))
    }

    /// True for zero.
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Parses the contract's decimal string: `-?digits(.digits)?`.
    ///
    /// Checks run in a fixed order (syntax, sign, precision, range) so that a
    /// string breaking several rules always gets the same reason.
    pub fn parse(text: &str) -> Result<Quantity, QuantityError> {
        Quantity::short(text.as_bytes()).map_or_else(|| Quantity::general(text), Ok)
    }

    /// [`Quantity::parse`] by its rules, one after the other.
    fn general(text: &str) -> Result<Quantity, QuantityError> {
        // Over bytes, in machine integers: most events carry two or three
        // quantities, and splitting with the string helpers and summing
        // digit by digit in an `i128` took about 290 instructions each.
        let bytes = text.as_bytes();
        let (negative, unsigned) = match bytes {
            [b'-', rest @ ..] => (true, rest),
            _ => (false, bytes),
        };
        let (whole, fraction) = match unsigned.iter().position(|&b| b == b'.') {
            Some(dot) => (&unsigned[..dot], Some(&unsigned[dot + 1..])),
            None => (unsigned, None),
        };
        let all_digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
        if !all_digits(whole) || fraction.is_some_and(|f| !all_digits(f)) {
            return Err(QuantityError::Syntax);
        }
        let fraction = fraction.unwrap_or_default();
        let nonzero = |s: &[u8]| s.iter().any(|&b| b != b'0');
        if negative && (nonzero(whole) || nonzero(fraction)) {
            return Err(QuantityError::Negative);
        }
        if fraction.len() > QUANTITY_SCALE as usize {
            return Err(QuantityError::Precision);
        }
        let significant = &whole[whole.iter().position(|&b| b != b'0').unwrap_or(whole.len())..];
        if significant.len() > 12 {
            return Err(QuantityError::OutOfRange);
        }
        // At most 12 and 9 digits: each fits a `u64`, the whole in nanos an `i128`.
        let value = |digits: &[u8]| digits.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        let fraction_nanos = value(fraction) * 10u64.pow(QUANTITY_SCALE - fraction.len() as u32);
        let nanos = i128::from(value(significant)) * 10i128.pow(QUANTITY_SCALE) + i128::from(fraction_nanos);
        Quantity::from_nanos(nanos).ok_or(QuantityError::OutOfRange)
    }

    /// The quantities nearly every event carries, read in one pass: up to
    /// ten digits, then a point and one to nine digits or nothing, which
    /// always parse and fit a `u64` of nanos. `None` for anything else,
    /// valid or not, which [`Quantity::parse`] reads by its rules in order
    /// (a property test holds the two to the same results). Read by those
    /// rules, a quantity took 195 instructions, 4% of the in-process bench.
    fn short(bytes: &[u8]) -> Option<Quantity> {
        const TENS: [u64; 10] = [1_000_000_000, 100_000_000, 10_000_000, 1_000_000, 100_000, 10_000, 1_000, 100, 10, 1];
        let digits = |from: usize, most: usize| {
            let (mut value, mut at) = (0u64, from);
            while let Some(digit) = bytes.get(at).map(|b| b.wrapping_sub(b'0')).filter(|&d| d <= 9) {
                if at - from == most {
                    return None;
                }
                value = value * 10 + u64::from(digit);
                at += 1;
            }
            (at > from).then_some((value, at))
        };
        let (whole, at) = digits(0, 10)?;
        let fraction = match bytes.get(at) {
            None => 0,
            Some(b'.') => {
                let (fraction, end) = digits(at + 1, 9)?;
                (end == bytes.len()).then_some(())?;
                fraction * TENS[end - at - 1]
            }
            Some(_) => return None,
        };
        Some(Quantity(i128::from(whole * TENS[0] + fraction)))
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_scaled(f, self.0, QUANTITY_SCALE)
    }
}

/// A usage or cost at 12 fractional digits: what ClickHouse stores as
/// `Decimal(38, 12)`, and what the `clickhouse` crate maps to `i128`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Amount(i128);

/// An arithmetic result left the range that `Decimal(38, 12)` can store.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("amount overflow: {what} does not fit Decimal(38, 12)")]
pub struct Overflow {
    /// What was being computed, for the operator reading the message.
    pub what: String,
}

impl Overflow {
    /// An overflow while computing `what`.
    pub fn new(what: impl Into<String>) -> Overflow {
        Overflow { what: what.into() }
    }
}

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(0);

    /// Builds an amount from its scaled integer, refusing what `Decimal(38, 12)`
    /// cannot store.
    pub fn from_scaled(scaled: i128) -> Option<Amount> {
        (scaled.checked_abs()? < DECIMAL38_LIMIT).then_some(Amount(scaled))
    }

    /// The scaled integer (value × 10^12).
    pub fn scaled(self) -> i128 {
        self.0
    }

    /// True for zero.
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `self + other`, or `None` when the sum leaves `Decimal(38, 12)`.
    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        Amount::from_scaled(self.0.checked_add(other.0)?)
    }

    /// `self - other`, or `None` when the difference leaves `Decimal(38, 12)`.
    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        Amount::from_scaled(self.0.checked_sub(other.0)?)
    }

    /// The exact value as a `rust_decimal`, when it fits its 28 digits.
    pub fn to_decimal(self) -> Option<rust_decimal::Decimal> {
        rust_decimal::Decimal::try_from_i128_with_scale(self.0, AMOUNT_SCALE).ok()
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_scaled(f, self.0, AMOUNT_SCALE)
    }
}

/// Writes `scaled / 10^scale` exactly, with all `scale` fractional digits.
fn write_scaled(f: &mut fmt::Formatter<'_>, scaled: i128, scale: u32) -> fmt::Result {
    let unit = 10u128.pow(scale);
    let magnitude = scaled.unsigned_abs();
    let sign = if scaled < 0 { "-" } else { "" };
    write!(f, "{sign}{}.{:0width$}", magnitude / unit, magnitude % unit, width = scale as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_format() {
        assert_eq!(Quantity::parse("4").unwrap().nanos(), 4_000_000_000);
        assert_eq!(Quantity::parse("0.000000001").unwrap().nanos(), 1);
        assert_eq!(Quantity::parse("007.5").unwrap().nanos(), 7_500_000_000);
        assert_eq!(Quantity::parse("-0").unwrap(), Quantity::ZERO);
        assert_eq!(Quantity::parse("999999999999.999999999").unwrap().nanos(), 999_999_999_999_999_999_999);
        assert_eq!(Quantity::parse("0000000000000000000000012.250").unwrap().nanos(), 12_250_000_000);
        assert_eq!(Quantity::parse("-0.000").unwrap(), Quantity::ZERO);
    }

    #[test]
    fn refuses_with_the_first_broken_rule() {
        for bad in ["", "-", ".5", "5.", "1e3", "+1", " 1", "1,5", "0x10", "١", "1.2.3", "--1", "-.0"] {
            assert_eq!(Quantity::parse(bad), Err(QuantityError::Syntax), "{bad:?}");
        }
        assert_eq!(Quantity::parse("-1"), Err(QuantityError::Negative));
        assert_eq!(Quantity::parse("-1.0000000001"), Err(QuantityError::Negative));
        assert_eq!(Quantity::parse("1.0000000001"), Err(QuantityError::Precision));
        assert_eq!(Quantity::parse("1.0000000000"), Err(QuantityError::Precision));
        assert_eq!(Quantity::parse("1000000000000"), Err(QuantityError::OutOfRange));
        assert_eq!(Quantity::parse(&"9".repeat(400)), Err(QuantityError::OutOfRange));
    }

    proptest::proptest! {
        /// The short path reads what the rules read, and leaves to them
        /// what it does not read: quantities of every length around its
        /// limits, signs, points and stray bytes.
        #[test]
        fn short_quantities_are_what_the_rules_read(
            text in "-?[0-9]{0,13}(\\.[0-9]{0,11})?[.x]?",
        ) {
            if let Some(short) = Quantity::short(text.as_bytes()) {
                let without = text.parse::<rust_decimal::Decimal>().map(|d| d * rust_decimal::Decimal::from(1_000_000_000));
                proptest::prop_assert_eq!(Some(short.nanos()), without.ok().map(|n| i128::try_from(n).unwrap()), "{}", text);
            }
            let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
            let usual = !text.starts_with('-') && (1..=10).contains(&whole.len()) && whole.bytes().all(|b| b.is_ascii_digit())
                && (!text.contains('.') || ((1..=9).contains(&fraction.len()) && fraction.bytes().all(|b| b.is_ascii_digit())));
            proptest::prop_assert_eq!(Quantity::short(text.as_bytes()).is_some(), usual, "{}", text);
            proptest::prop_assert_eq!(Quantity::parse(&text), Quantity::general(&text), "{}", text);
        }
    }

    #[test]
    fn amounts_stay_inside_decimal_38_12() {
        let max = Amount::from_scaled(DECIMAL38_LIMIT - 1).unwrap();
        assert!(Amount::from_scaled(DECIMAL38_LIMIT).is_none());
        assert!(max.checked_add(Amount::from_scaled(1).unwrap()).is_none());
        assert!(Amount::from_scaled(i128::MIN).is_none());
        assert_eq!(Amount::from_scaled(-1_500_000_000_000).unwrap().to_string(), "-1.500000000000");
    }
}
