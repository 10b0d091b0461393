//! The shape of a run: worker threads in this process, and the other
//! processes of a cluster. Builds `timely::Config` in code; no home-made
//! networking, timely's own cluster mode connects the processes.

use std::path::PathBuf;

/// Worker threads here, this process's index, and the cluster's hosts.
#[derive(Clone, Debug, clap::Args)]
pub struct Cluster {
    /// Worker threads in this process.
    #[arg(long = "workers", short = 'w', default_value_t = 1, env = "TALLY_WORKERS")]
    pub threads: usize,
    /// This process's index in the cluster (0-based); a StatefulSet pod's
    /// ordinal works.
    #[arg(long, short = 'p', default_value_t = 0, env = "TALLY_PROCESS")]
    pub process: usize,
    /// File with one `host:port` per process, in process order.
    #[arg(long, short = 'H', env = "TALLY_HOSTFILE")]
    pub hostfile: Option<PathBuf>,
}

impl Cluster {
    /// The timely configuration for this shape.
    pub fn timely_config(&self) -> anyhow::Result<timely::Config> {
        anyhow::ensure!(self.threads > 0, "--workers must be at least 1");
        let Some(hostfile) = &self.hostfile else {
            anyhow::ensure!(self.process == 0, "--process {} needs a --hostfile", self.process);
            return Ok(timely::Config::process(self.threads));
        };
        let text = std::fs::read_to_string(hostfile)
            .map_err(|e| anyhow::anyhow!("cannot read hostfile {}: {e}", hostfile.display()))?;
        let addresses: Vec<String> =
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect();
        anyhow::ensure!(
            self.process < addresses.len(),
            "--process {} but the hostfile {} lists {} processes",
            self.process,
            hostfile.display(),
            addresses.len()
        );
        Ok(timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: self.threads,
                process: self.process,
                addresses,
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        })
    }
}
