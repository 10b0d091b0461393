//! Configuration in layers: built-in defaults, then the TOML file
//! (`--config`), then `TALLY_SECTION_KEY` environment variables, then flags.
//!
//! Every key of the file has a flag and a variable; clap reads both (a flag
//! wins over its variable) and whatever they set overrides the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tally_dataflows::checkpoint::Cadence;
use tally_dataflows::prices::PriceList;
use tally_dataflows::settings::Settings;
use tally_dataflows::time::{Millis, parse_duration};

/// The price list compiled into the binary, used when no file is configured.
pub const DEFAULT_PRICES: &str = include_str!("../schemas/prices.toml");

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[kafka]`
    pub kafka: Kafka,
    /// `[clickhouse]`
    pub clickhouse: ClickHouse,
    /// `[pricing]`
    pub pricing: Pricing,
    /// `[time]`
    pub time: Time,
    /// `[checkpoint]`
    pub checkpoint: Checkpoint,
    /// `[metrics]`
    pub metrics: Metrics,
    /// Where the file was read from, to resolve relative paths in it.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[kafka]`: the event bus, and how to reach it securely.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kafka {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topic of resource events.
    pub topic: String,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (librdkafka's
    /// `security.protocol`); empty for librdkafka's default.
    pub security_protocol: String,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; empty for none.
    pub sasl_mechanism: String,
    /// SASL user.
    pub sasl_username: String,
    /// SASL password (never logged).
    pub sasl_password: String,
    /// CA certificate file (PEM) to verify the brokers with; empty for the
    /// system's.
    pub ssl_ca_location: String,
    /// Any other librdkafka client setting, passed through as is
    /// (`[kafka.properties]`): these win over tally's own tuning, the keys
    /// above win over these.
    pub properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |key: &String| key.contains("password") || key.contains("secret") || key.ends_with(".key.pem");
        let properties: BTreeMap<&String, &str> =
            self.properties.iter().map(|(k, v)| (k, if secret(k) { "<redacted>" } else { v.as_str() })).collect();
        f.debug_struct("Kafka")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &redacted(&self.sasl_password))
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("properties", &properties)
            .finish()
    }
}

fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() { "" } else { "<redacted>" }
}

impl Kafka {
    /// A librdkafka client configuration: tally's `tuning` for this client,
    /// which `[kafka.properties]` may override, then the brokers and every
    /// security setting. Callers set what correctness needs afterwards.
    pub fn client_config(&self, tuning: &[(&str, &str)]) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        for (key, value) in tuning {
            config.set(*key, *value);
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config.set("bootstrap.servers", &self.brokers);
        let settings = [
            ("security.protocol", &self.security_protocol),
            ("sasl.mechanism", &self.sasl_mechanism),
            ("sasl.username", &self.sasl_username),
            ("sasl.password", &self.sasl_password),
            ("ssl.ca.location", &self.ssl_ca_location),
        ];
        for (key, value) in settings {
            if !value.is_empty() {
                config.set(key, value);
            }
        }
        config
    }
}

/// `[clickhouse]`: the billing warehouse.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouse {
    /// HTTP endpoint; `https://` for TLS, verified against the system's CA
    /// certificates or those in the file `SSL_CERT_FILE` names.
    pub url: String,
    /// Database holding the tables (created by `tally migrate`).
    pub database: String,
    /// User.
    pub user: String,
    /// Password (never logged).
    pub password: String,
    /// Rows one insert takes, about: an epoch's rows beyond it go out in
    /// several inserts as they are made (see [`crate::sink`]).
    pub rows_per_insert: usize,
}

/// `[pricing]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pricing {
    /// Price list file; the built-in list when absent.
    pub file: Option<PathBuf>,
}

/// `[time]`: the contract's time rules, as durations (`1h`, `30s`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Time {
    /// How far behind its partition's clock an event may be.
    pub allowed_lateness: String,
    /// After how long without a message a partition stops holding the watermark.
    pub idle_timeout: String,
    /// Step to which running resources accrue.
    pub accrual_granularity: String,
    /// How far ahead of its Kafka timestamp an event may be.
    pub max_future: String,
}

/// `[checkpoint]`
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Checkpoint {
    /// Where checkpoints go.
    pub url: String,
    /// How often a checkpoint is committed.
    pub interval: String,
    /// Epoch length: how often rows are written to ClickHouse (at most
    /// `interval`; a checkpoint is taken every so many epochs).
    pub epoch_interval: String,
    /// How many committed checkpoints to keep.
    pub keep: usize,
    /// A usage snapshot leaves for the store in chunks of at least this
    /// many bytes, as it is encoded.
    pub chunk_bytes: usize,
}

/// `[metrics]`
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// Prometheus endpoint address.
    pub listen: String,
}

impl std::fmt::Debug for ClickHouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouse")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("rows_per_insert", &self.rows_per_insert)
            .finish()
    }
}

impl Default for Kafka {
    fn default() -> Kafka {
        Kafka {
            brokers: "127.0.0.1:9092".into(),
            topic: "resource-events".into(),
            security_protocol: String::new(),
            sasl_mechanism: String::new(),
            sasl_username: String::new(),
            sasl_password: String::new(),
            ssl_ca_location: String::new(),
            properties: BTreeMap::new(),
        }
    }
}

impl Default for ClickHouse {
    fn default() -> ClickHouse {
        ClickHouse {
            url: "http://127.0.0.1:8123".into(),
            database: "tally".into(),
            user: "default".into(),
            password: String::new(),
            // A worker's chunk waits in the writer while it makes the next:
            // at 131,072 rows, the two workers' chunks were 64 MB of a live
            // catch-up's 1.2 GB peak with 1.25M running resources. Smaller
            // inserts cost a drain a few percent (see BENCHMARKS.md).
            rows_per_insert: 1 << 16,
        }
    }
}

impl Default for Time {
    fn default() -> Time {
        Time {
            allowed_lateness: "1h".into(),
            idle_timeout: "30s".into(),
            accrual_granularity: "1m".into(),
            max_future: "1h".into(),
        }
    }
}

impl Default for Checkpoint {
    fn default() -> Checkpoint {
        Checkpoint {
            url: "file://./state".into(),
            interval: "10s".into(),
            epoch_interval: "2s".into(),
            keep: 3,
            chunk_bytes: 8 << 20,
        }
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics { listen: "127.0.0.1:9464".into() }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its place.
        message: String,
    },
    /// A value is out of place.
    #[error("config key {key}: {message}")]
    Invalid {
        /// `section.key`.
        key: &'static str,
        /// Expected versus found.
        message: String,
    },
    /// The price list is unusable.
    #[error(transparent)]
    Prices(#[from] tally_dataflows::prices::PriceListError),
}

/// Every key as a flag with its environment variable, for the commands that
/// read the configuration.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// Configuration file (TOML).
    #[arg(long, env = "TALLY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "TALLY_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Kafka topic of resource events.
    #[arg(long, env = "TALLY_KAFKA_TOPIC")]
    pub kafka_topic: Option<String>,
    /// Kafka security protocol: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(long, env = "TALLY_KAFKA_SECURITY_PROTOCOL")]
    pub kafka_security_protocol: Option<String>,
    /// Kafka SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long, env = "TALLY_KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,
    /// Kafka SASL user.
    #[arg(long, env = "TALLY_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// Kafka SASL password.
    #[arg(long, env = "TALLY_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<String>,
    /// CA certificate file (PEM) for the brokers' TLS.
    #[arg(long, env = "TALLY_KAFKA_SSL_CA_LOCATION")]
    pub kafka_ssl_ca_location: Option<String>,
    /// ClickHouse HTTP URL.
    #[arg(long, env = "TALLY_CLICKHOUSE_URL")]
    pub clickhouse_url: Option<String>,
    /// ClickHouse database.
    #[arg(long, env = "TALLY_CLICKHOUSE_DATABASE")]
    pub clickhouse_database: Option<String>,
    /// ClickHouse user.
    #[arg(long, env = "TALLY_CLICKHOUSE_USER")]
    pub clickhouse_user: Option<String>,
    /// ClickHouse password.
    #[arg(long, env = "TALLY_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    pub clickhouse_password: Option<String>,
    /// Rows per ClickHouse insert, about.
    #[arg(long, env = "TALLY_CLICKHOUSE_ROWS_PER_INSERT")]
    pub clickhouse_rows_per_insert: Option<usize>,
    /// Price list file.
    #[arg(long, env = "TALLY_PRICING_FILE")]
    pub pricing_file: Option<PathBuf>,
    /// Allowed lateness, e.g. `1h`.
    #[arg(long, env = "TALLY_TIME_ALLOWED_LATENESS")]
    pub time_allowed_lateness: Option<String>,
    /// Idle timeout of a partition, e.g. `30s`.
    #[arg(long, env = "TALLY_TIME_IDLE_TIMEOUT")]
    pub time_idle_timeout: Option<String>,
    /// Accrual granularity, e.g. `1m`.
    #[arg(long, env = "TALLY_TIME_ACCRUAL_GRANULARITY")]
    pub time_accrual_granularity: Option<String>,
    /// Max future, e.g. `1h`.
    #[arg(long, env = "TALLY_TIME_MAX_FUTURE")]
    pub time_max_future: Option<String>,
    /// Checkpoint store URL.
    #[arg(long, env = "TALLY_CHECKPOINT_URL")]
    pub checkpoint_url: Option<String>,
    /// Checkpoint interval, e.g. `10s`.
    #[arg(long, env = "TALLY_CHECKPOINT_INTERVAL")]
    pub checkpoint_interval: Option<String>,
    /// Epoch interval, e.g. `2s`: how often rows are written.
    #[arg(long, env = "TALLY_CHECKPOINT_EPOCH_INTERVAL")]
    pub checkpoint_epoch_interval: Option<String>,
    /// Committed checkpoints to keep.
    #[arg(long, env = "TALLY_CHECKPOINT_KEEP")]
    pub checkpoint_keep: Option<usize>,
    /// Bytes of a usage snapshot's chunk.
    #[arg(long, env = "TALLY_CHECKPOINT_CHUNK_BYTES")]
    pub checkpoint_chunk_bytes: Option<usize>,
    /// Metrics listen address.
    #[arg(long, env = "TALLY_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

impl Overrides {
    /// Reads the file (if any) and applies the environment and flags over it.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            None => Config::default(),
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                let mut config: Config = toml::from_str(&text)
                    .map_err(|e| ConfigError::Parse { path: path.clone(), message: e.to_string() })?;
                config.source = Some(path.clone());
                config
            }
        };
        let set = |target: &mut String, value: &Option<String>| {
            if let Some(value) = value {
                target.clone_from(value);
            }
        };
        set(&mut config.kafka.brokers, &self.kafka_brokers);
        set(&mut config.kafka.topic, &self.kafka_topic);
        set(&mut config.kafka.security_protocol, &self.kafka_security_protocol);
        set(&mut config.kafka.sasl_mechanism, &self.kafka_sasl_mechanism);
        set(&mut config.kafka.sasl_username, &self.kafka_sasl_username);
        set(&mut config.kafka.sasl_password, &self.kafka_sasl_password);
        set(&mut config.kafka.ssl_ca_location, &self.kafka_ssl_ca_location);
        set(&mut config.clickhouse.url, &self.clickhouse_url);
        set(&mut config.clickhouse.database, &self.clickhouse_database);
        set(&mut config.clickhouse.user, &self.clickhouse_user);
        set(&mut config.clickhouse.password, &self.clickhouse_password);
        set(&mut config.time.allowed_lateness, &self.time_allowed_lateness);
        set(&mut config.time.idle_timeout, &self.time_idle_timeout);
        set(&mut config.time.accrual_granularity, &self.time_accrual_granularity);
        set(&mut config.time.max_future, &self.time_max_future);
        set(&mut config.checkpoint.url, &self.checkpoint_url);
        set(&mut config.checkpoint.interval, &self.checkpoint_interval);
        set(&mut config.checkpoint.epoch_interval, &self.checkpoint_epoch_interval);
        set(&mut config.metrics.listen, &self.metrics_listen);
        if let Some(keep) = self.checkpoint_keep {
            config.checkpoint.keep = keep;
        }
        if config.checkpoint.keep == 0 {
            return Err(ConfigError::Invalid { key: "checkpoint.keep", message: "must be at least 1".into() });
        }
        if let Some(bytes) = self.checkpoint_chunk_bytes {
            config.checkpoint.chunk_bytes = bytes;
        }
        if config.checkpoint.chunk_bytes == 0 {
            return Err(ConfigError::Invalid { key: "checkpoint.chunk_bytes", message: "must be at least 1".into() });
        }
        if let Some(rows) = self.clickhouse_rows_per_insert {
            config.clickhouse.rows_per_insert = rows;
        }
        if config.clickhouse.rows_per_insert == 0 {
            return Err(ConfigError::Invalid {
                key: "clickhouse.rows_per_insert",
                message: "must be at least 1".into(),
            });
        }
        if let Some(file) = &self.pricing_file {
            config.pricing.file = Some(file.clone());
        }
        if config.kafka.topic.is_empty() {
            return Err(ConfigError::Invalid { key: "kafka.topic", message: "must not be empty".into() });
        }
        Ok(config)
    }
}

fn duration(key: &'static str, text: &str) -> Result<Millis, ConfigError> {
    parse_duration(text).map_err(|message| ConfigError::Invalid { key, message })
}

fn positive(key: &'static str, text: &str) -> Result<Millis, ConfigError> {
    let duration = duration(key, text)?;
    if duration <= 0 {
        return Err(ConfigError::Invalid { key, message: "must be positive".into() });
    }
    Ok(duration)
}

impl Config {
    /// The time rules.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let settings = Settings::new(
            duration("time.allowed_lateness", &self.time.allowed_lateness)?,
            duration("time.max_future", &self.time.max_future)?,
            duration("time.accrual_granularity", &self.time.accrual_granularity)?,
        );
        settings.validate().map_err(|message| ConfigError::Invalid { key: "time", message })?;
        Ok(settings)
    }

    /// After how long without a message a partition is idle.
    pub fn idle_timeout(&self) -> Result<Millis, ConfigError> {
        duration("time.idle_timeout", &self.time.idle_timeout)
    }

    /// How long an epoch lasts: `checkpoint.epoch_interval`, at most
    /// `checkpoint.interval`.
    pub fn epoch_interval(&self) -> Result<Millis, ConfigError> {
        Ok(self.epoch_interval_ms()?.min(self.checkpoint_interval_ms()?))
    }

    /// Which epochs are checkpointed: enough for one checkpoint per
    /// `checkpoint.interval`.
    pub fn cadence(&self) -> Result<Cadence, ConfigError> {
        let (interval, epoch) = (self.checkpoint_interval_ms()?.unsigned_abs(), self.epoch_interval()?.unsigned_abs());
        Ok(Cadence::every(interval.div_ceil(epoch)))
    }

    fn checkpoint_interval_ms(&self) -> Result<Millis, ConfigError> {
        positive("checkpoint.interval", &self.checkpoint.interval)
    }

    fn epoch_interval_ms(&self) -> Result<Millis, ConfigError> {
        positive("checkpoint.epoch_interval", &self.checkpoint.epoch_interval)
    }

    /// The price list: the configured file, or the built-in one.
    pub fn prices(&self) -> Result<PriceList, ConfigError> {
        match &self.pricing.file {
            None => Ok(PriceList::parse(DEFAULT_PRICES)?),
            Some(file) => Ok(PriceList::load(&self.resolve(file))?),
        }
    }

    /// A path from the file: as given when it exists, else beside the file.
    fn resolve(&self, path: &Path) -> PathBuf {
        match &self.source {
            Some(source) if path.is_relative() && !path.exists() => {
                source.parent().map_or_else(|| path.to_path_buf(), |dir| dir.join(path))
            }
            _ => path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_environment_override_the_file() {
        let dir = std::env::temp_dir().join(format!("tally-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tally.toml");
        std::fs::write(&file, "[kafka]\ntopic = \"from-file\"\n[time]\nallowed_lateness = \"2h\"\n").unwrap();
        let overrides =
            Overrides { config: Some(file), kafka_brokers: Some("10.0.0.1:9092".into()), ..Overrides::default() };
        let config = overrides.load().unwrap();
        assert_eq!(config.kafka.topic, "from-file");
        assert_eq!(config.kafka.brokers, "10.0.0.1:9092");
        assert_eq!(config.settings().unwrap().allowed_lateness, 2 * tally_dataflows::time::HOUR);
        assert_eq!(config.clickhouse.database, "tally");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        let config = Config { time: Time { accrual_granularity: "7s".into(), ..Time::default() }, ..Config::default() };
        assert!(config.settings().unwrap_err().to_string().contains("accrual_granularity must divide one hour"));
        let config = Config { time: Time { max_future: "soon".into(), ..Time::default() }, ..Config::default() };
        assert!(config.settings().unwrap_err().to_string().contains("time.max_future"));
        let text = "[kafka]\ntopik = \"x\"\n";
        assert!(toml::from_str::<Config>(text).unwrap_err().to_string().contains("topik"));
        let config = Config {
            checkpoint: Checkpoint { epoch_interval: "0s".into(), ..Checkpoint::default() },
            ..Config::default()
        };
        assert!(config.cadence().unwrap_err().to_string().contains("checkpoint.epoch_interval"));
        let no_rows = Overrides { clickhouse_rows_per_insert: Some(0), ..Overrides::default() };
        assert!(no_rows.load().unwrap_err().to_string().contains("clickhouse.rows_per_insert"));
        let no_chunk = Overrides { checkpoint_chunk_bytes: Some(0), ..Overrides::default() };
        assert!(no_chunk.load().unwrap_err().to_string().contains("checkpoint.chunk_bytes"));
        let chunk = Overrides { checkpoint_chunk_bytes: Some(4096), ..Overrides::default() };
        assert_eq!(chunk.load().unwrap().checkpoint.chunk_bytes, 4096);
    }

    #[test]
    fn a_checkpoint_is_taken_every_so_many_epochs() {
        let with = |interval: &str, epoch: &str| Config {
            checkpoint: Checkpoint { interval: interval.into(), epoch_interval: epoch.into(), ..Checkpoint::default() },
            ..Config::default()
        };
        let shape = |config: Config| (config.epoch_interval().unwrap(), config.cadence().unwrap());
        assert_eq!(shape(Config::default()), (2_000, Cadence::every(5)));
        assert_eq!(shape(with("100ms", "2s")), (100, Cadence::every(1)), "an epoch is never longer");
        assert_eq!(shape(with("100ms", "40ms")), (40, Cadence::every(3)), "at least one checkpoint per interval");
    }

    #[test]
    fn kafka_properties_override_the_tuning_but_not_the_brokers_or_security() {
        let properties = [("linger.ms", "5"), ("bootstrap.servers", "elsewhere:9092"), ("sasl.username", "someone")];
        let kafka = Kafka {
            brokers: "here:9092".into(),
            sasl_username: "billing".into(),
            properties: properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Kafka::default()
        };
        let config = kafka.client_config(&[("linger.ms", "20"), ("batch.num.messages", "10000")]);
        assert_eq!(config.get("linger.ms"), Some("5"), "the user's setting wins over tally's tuning");
        assert_eq!(config.get("batch.num.messages"), Some("10000"));
        assert_eq!(config.get("bootstrap.servers"), Some("here:9092"));
        assert_eq!(config.get("sasl.username"), Some("billing"));
    }
}
