//! Logs: tracing to stderr with structured fields; human-readable by default,
//! JSON lines with `TALLY_LOG_FORMAT=json`; the level from `TALLY_LOG`
//! (`info` by default, any tracing filter works).

use tracing_subscriber::EnvFilter;

/// Installs the subscriber once, at start.
pub fn init() {
    let filter = EnvFilter::try_from_env("TALLY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("TALLY_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
