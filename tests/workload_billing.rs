//! The generated workload, billed by the dataflow on several workers and epoch
//! cuts, equals the oracle: a realistic mix at a size the property tests do
//! not reach.

use std::sync::Arc;

use tally::workload::{Generator, Workload};
use tally_dataflows::checkpoint::Cadence;
use tally_dataflows::dataflow::ROWS_PER_STEP;
use tally_dataflows::event::Reason;
use tally_dataflows::memory::{self, RunShape};
use tally_dataflows::oracle;
use tally_dataflows::prices::PriceList;
use tally_dataflows::settings::Settings;

#[test]
fn a_generated_day_bills_the_same_in_the_dataflow_and_the_oracle() {
    let prices = Arc::new(PriceList::parse(include_str!("../schemas/prices.toml")).unwrap());
    let workload = Workload { events: 40_000, fleet: 300, accounts: 40, partitions: 5, ..Workload::default() };
    let messages = Generator::new(workload.clone()).messages();
    let partitions: Vec<u32> = (0..workload.partitions).collect();
    let settings = Settings::default();
    let expected = oracle::run(&partitions, messages.clone(), &prices, &settings).unwrap();

    let reasons = expected.rejections_by_reason();
    for reason in [Reason::Late, Reason::Future, Reason::MalformedJson, Reason::UnknownSku] {
        assert!(reasons.contains_key(&reason), "the workload has no {reason}: {reasons:?}");
    }
    assert!(expected.outcomes.duplicates > 100);
    assert!(expected.breakdowns.len() > 1_000);

    for shape in [
        RunShape { workers: 1, epoch_starts: Vec::new(), cadence: Cadence::default(), rows_per_step: ROWS_PER_STEP },
        RunShape {
            workers: 2,
            epoch_starts: (0..messages.len()).step_by(997).collect(),
            cadence: Cadence::every(3),
            rows_per_step: 100,
        },
        RunShape {
            workers: 4,
            epoch_starts: (0..messages.len()).step_by(4_999).collect(),
            cadence: Cadence::every(2),
            rows_per_step: ROWS_PER_STEP,
        },
    ] {
        let actual = memory::run(&partitions, messages.clone(), Arc::clone(&prices), settings, &shape).unwrap();
        assert_eq!(actual.breakdowns, expected.breakdowns, "{} workers", shape.workers);
        assert_eq!(actual.totals, expected.totals, "{} workers", shape.workers);
        assert_eq!(actual.outcomes, expected.outcomes, "{} workers", shape.workers);
        let keys =
            |l: &tally_dataflows::rows::Ledger| l.rejections.iter().map(|(k, r)| (*k, r.reason)).collect::<Vec<_>>();
        assert_eq!(keys(&actual), keys(&expected), "{} workers", shape.workers);
    }
}
