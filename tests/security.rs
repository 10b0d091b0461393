//! Secured services: a broker that serves only TLS and requires SASL/SCRAM
//! login, and ClickHouse over HTTPS as a user with a password. `tally gen`,
//! `migrate`, `run` and `reconcile` reach both through the configured
//! settings, the result is exact, no secret reaches the logs, and a wrong
//! password or an untrusted certificate is refused with a clear message.

mod support;

use std::process::Command;

use support::{PrivateBroker, Scratch, local_dir, self_signed};

const KAFKA_USER: &str = "tally";
const KAFKA_PASSWORD: &str = "kafka-s3cret-pw";
const CLICKHOUSE_USER: &str = "tally_secured";
/// Set by `deploy/local/up.sh` in `users.d/tally-secured.xml`.
const CLICKHOUSE_PASSWORD: &str = "tally-local-secret";

fn secured(mut command: Command, kafka_ca: &str, clickhouse_ca: &str) -> Command {
    command
        .env("TALLY_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
        .env("TALLY_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
        .env("TALLY_KAFKA_SASL_USERNAME", KAFKA_USER)
        .env("TALLY_KAFKA_SASL_PASSWORD", KAFKA_PASSWORD)
        .env("TALLY_KAFKA_SSL_CA_LOCATION", kafka_ca)
        .env("TALLY_CLICKHOUSE_URL", "https://127.0.0.1:8443")
        .env("TALLY_CLICKHOUSE_USER", CLICKHOUSE_USER)
        .env("TALLY_CLICKHOUSE_PASSWORD", CLICKHOUSE_PASSWORD)
        .env("SSL_CERT_FILE", clickhouse_ca)
        .env("TALLY_LOG", "debug");
    command
}

fn run(mut command: Command, what: &str) -> String {
    let output = command.output().expect("tally starts");
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{what} failed ({}):\n{log}", output.status);
    for secret in [KAFKA_PASSWORD, CLICKHOUSE_PASSWORD] {
        assert!(!log.contains(secret), "{what} logged a password:\n{log}");
    }
    log
}

#[test]
fn tally_bills_exactly_through_tls_sasl_and_clickhouse_credentials() {
    let scratch = Scratch::new("secured");
    let tls = scratch.state.with_extension("tls");
    let (certificate, key) = self_signed(&tls);
    let broker = PrivateBroker::start_secured(tls.join("broker"), KAFKA_USER, KAFKA_PASSWORD, &certificate, &key);
    let scratch = scratch.on(&broker.address);
    let kafka_ca = certificate.display().to_string();
    let clickhouse_ca = local_dir().join("clickhouse/ca.crt").display().to_string();
    let tally = |args: &[&str]| secured(scratch.tally(args), &kafka_ca, &clickhouse_ca);

    run(tally(&["gen", "--kafka", "--events", "6000", "--partitions", "3", "--fleet", "300"]), "gen");
    run(tally(&["migrate"]), "migrate");
    run(tally(&["run", "--drain", "--workers", "2"]), "run");
    let report = run(tally(&["reconcile"]), "reconcile");
    assert!(report.contains("reconciled 6000 messages") && report.contains(": 0 rows differ"), "{report}");

    let mut wrong = tally(&["migrate"]);
    wrong.env("TALLY_CLICKHOUSE_PASSWORD", "not-the-password-xyz");
    let output = wrong.output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a wrong password must be refused:\n{log}");
    assert!(log.contains("Wrong password for user tally_secured"), "{log}");
    assert!(!log.contains("not-the-password-xyz"), "the wrong password was logged:\n{log}");

    let mut untrusted = tally(&["migrate"]);
    untrusted.env("SSL_CERT_FILE", &kafka_ca);
    let output = untrusted.output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a certificate from an unknown issuer must be refused:\n{log}");
    assert!(log.to_lowercase().contains("certificate"), "{log}");
}
