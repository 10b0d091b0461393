//! Rating: the cost of one breakdown row, rounded exactly once.
//!
//! cost = round_half_even(usage × unit_price [÷ 3600 for gauges], 12 digits).
//! The product of a large usage and a price can exceed `i128`, so it is formed
//! in 256 bits then; the result must fit `Decimal(38, 12)`.

use ethnum::I256;
use rust_decimal::Decimal;

use crate::fixed::{Amount, Overflow};
use crate::prices::SkuKind;

/// Seconds in the hour a gauge's unit price is quoted per.
const SECONDS_PER_HOUR: i128 = 3600;

/// How many scales a `Decimal` has: 0 to 28.
const SCALES: usize = Decimal::MAX_SCALE as usize + 1;

/// 10^scale for every scale a `Decimal` has: raised by squaring in 128
/// bits, a price's power of ten was 80 of the 200 instructions a cost took.
const POWERS_OF_TEN: [i128; SCALES] = {
    let mut powers = [1; SCALES];
    let mut scale = 1;
    while scale < powers.len() {
        powers[scale] = powers[scale - 1] * 10;
        scale += 1;
    }
    powers
};

/// Cost of `usage` (unit-seconds for gauges, units for counters) at `unit_price`.
pub fn cost(usage: Amount, unit_price: Decimal, kind: SkuKind) -> Result<Amount, Overflow> {
    let per = match kind {
        SkuKind::Gauge => SECONDS_PER_HOUR,
        SkuKind::Counter => 1,
    };
    // At most 10^28 × 3600: a price's scale is at most 28.
    let denominator = POWERS_OF_TEN[unit_price.scale() as usize] * per;
    let quotient = match usage.scaled().checked_mul(unit_price.mantissa()) {
        // Nearly every product fits 128 bits, where dividing is several
        // times cheaper than in 256 (it was 4% of a worker's instructions).
        Some(numerator) => Some(div_round_half_even(numerator, denominator)),
        None => {
            let numerator = I256::from(usage.scaled()) * I256::from(unit_price.mantissa());
            i128::try_from(wide_div_round_half_even(numerator, I256::from(denominator))).ok()
        }
    };
    quotient
        .and_then(Amount::from_scaled)
        .ok_or_else(|| Overflow::new(format!("cost of usage {usage} at unit price {unit_price}")))
}

/// `numerator / denominator` rounded to the nearest integer, ties to even.
/// `denominator` must be positive.
///
/// One division, in 64 bits where both fit (most rows: a cost is rated
/// twice for every row that changes), its remainder taken from the
/// quotient: a quotient and a remainder in 128 bits were two calls into
/// the runtime's division, 240 instructions a cost.
fn div_round_half_even(numerator: i128, denominator: i128) -> i128 {
    let truncated = match (i64::try_from(numerator), i64::try_from(denominator)) {
        (Ok(numerator), Ok(denominator)) => i128::from(numerator / denominator),
        _ => numerator / denominator,
    };
    let remainder = numerator - truncated * denominator;
    // Floored, as `div_euclid` floors for a positive denominator.
    let (quotient, remainder) =
        if remainder < 0 { (truncated - 1, remainder + denominator) } else { (truncated, remainder) };
    let twice = remainder * 2;
    if twice > denominator || (twice == denominator && quotient % 2 != 0) { quotient + 1 } else { quotient }
}

/// [`div_round_half_even`] in 256 bits.
fn wide_div_round_half_even(numerator: I256, denominator: I256) -> I256 {
    let quotient = numerator.div_euclid(denominator);
    let twice = numerator.rem_euclid(denominator) * 2;
    if twice > denominator || (twice == denominator && quotient % 2 != 0) { quotient + 1 } else { quotient }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(text: &str) -> Amount {
        let d: Decimal = text.parse().unwrap();
        let scaled = d.mantissa() * 10i128.pow(12 - d.scale());
        Amount::from_scaled(scaled).unwrap()
    }

    #[test]
    fn gauges_are_priced_per_hour() {
        let four_vcpu_hour = amount("14400");
        let cost = cost(four_vcpu_hour, "0.0125".parse().unwrap(), SkuKind::Gauge).unwrap();
        assert_eq!(cost.to_string(), "0.050000000000");
    }

    #[test]
    fn rounds_half_to_even_once() {
        let p: Decimal = "0.5".parse().unwrap();
        // 1e-12 units × 0.5 = 0.5e-12: a tie, rounds to the even 0.
        assert_eq!(cost(Amount::from_scaled(1).unwrap(), p, SkuKind::Counter).unwrap().scaled(), 0);
        // 3e-12 × 0.5 = 1.5e-12: a tie, rounds to the even 2.
        assert_eq!(cost(Amount::from_scaled(3).unwrap(), p, SkuKind::Counter).unwrap().scaled(), 2);
        // 5e-12 × 0.5 = 2.5e-12 → 2.
        assert_eq!(cost(Amount::from_scaled(5).unwrap(), p, SkuKind::Counter).unwrap().scaled(), 2);
        // 1 unit-second at 1/hour = 0.000277777777777…, rounds up at the 12th digit.
        let second = cost(amount("1"), Decimal::ONE, SkuKind::Gauge).unwrap();
        assert_eq!(second.to_string(), "0.000277777778");
        // Negative deltas round symmetrically around ties too.
        assert_eq!(cost(Amount::from_scaled(-3).unwrap(), p, SkuKind::Counter).unwrap().scaled(), -2);
    }

    #[test]
    fn every_price_scale_has_its_power_of_ten() {
        for (scale, &power) in (0u32..).zip(&POWERS_OF_TEN) {
            assert_eq!(power, 10i128.pow(scale), "scale {scale}");
        }
        assert_eq!(POWERS_OF_TEN.len(), Decimal::MAX_SCALE as usize + 1);
        let smallest = Decimal::new(1, Decimal::MAX_SCALE);
        assert_eq!(cost(amount("1"), smallest, SkuKind::Counter).unwrap().scaled(), 0);
    }

    #[test]
    fn a_day_of_the_largest_resource_is_exact_beyond_rust_decimal() {
        // 999999999999.999999999 units for a whole day, in unit-seconds at 12
        // digits: 8.64e28 as a scaled integer, more than rust_decimal holds.
        let usage = Amount::from_scaled(999_999_999_999_999_999_999 * 86_400_000).unwrap();
        assert!(usage.to_decimal().is_none());
        let cost = cost(usage, "0.0125".parse().unwrap(), SkuKind::Gauge).unwrap();
        assert_eq!(cost.to_string(), "299999999999.999999999700");
    }

    proptest::proptest! {
        #[test]
        fn rounding_in_128_bits_equals_rounding_in_256(
            numerator in proptest::prop_oneof![
                proptest::prelude::any::<i128>(),
                proptest::strategy::Strategy::prop_map(proptest::prelude::any::<i64>(), i128::from),
                -1_000_000i128..1_000_000,
            ],
            scale in 0u32..=28,
            gauge in proptest::prelude::any::<bool>(),
        ) {
            let denominator = 10i128.pow(scale) * if gauge { SECONDS_PER_HOUR } else { 1 };
            let wide = wide_div_round_half_even(I256::from(numerator), I256::from(denominator));
            proptest::prop_assert_eq!(I256::from(div_round_half_even(numerator, denominator)), wide);
        }
    }

    #[test]
    fn a_product_beyond_128_bits_is_rated_in_256() {
        let usage = Amount::from_scaled(10i128.pow(37)).unwrap();
        let one: Decimal = "1.0000000000000000000".parse().unwrap();
        assert!(usage.scaled().checked_mul(one.mantissa()).is_none());
        assert_eq!(cost(usage, one, SkuKind::Counter).unwrap(), usage);
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        let huge = Amount::from_scaled(crate::fixed::DECIMAL38_LIMIT - 1).unwrap();
        let err = cost(huge, "1000".parse().unwrap(), SkuKind::Counter).unwrap_err();
        assert!(err.to_string().contains("does not fit Decimal(38, 12)"), "{err}");
    }
}
