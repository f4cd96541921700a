//! Controller configuration (TOML file, overridden by command-line flags).

use std::path::PathBuf;

use serde::Deserialize;

/// Which ledger holds the desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LedgerKind {
    /// In memory: everything is lost when the controller stops (tests, demos).
    Memory,
    /// An embedded crash-safe file (redb) in `data_dir`: the default, one controller.
    Redb,
    /// etcd: several controller replicas, one elected leader.
    Etcd,
}

/// The controller's configuration. Every field has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// Address to serve gRPC on.
    pub listen: String,
    /// Placement policy name (`fgd-balanced`, the default; `fgd`, `best-fit`, ...; see placement).
    pub policy: String,
    /// Seconds to wait for an agent to confirm a command.
    pub command_timeout_s: u64,
    /// Ledger kind.
    pub ledger: LedgerKind,
    /// Directory of the redb ledger file (`ledger.redb`).
    pub data_dir: PathBuf,
    /// Seconds a stop (SIGTERM, Ctrl-C) may take: in-flight calls finish within it, then the energy
    /// history is flushed and leadership resigned, and the process exits.
    pub shutdown_timeout_s: u64,
    /// Seconds an agent's connection may stay silent (unanswered HTTP/2 keep-alives) before its
    /// node is marked unreachable.
    pub agent_lease_s: u64,
    /// Seconds something greenslice made may sit on a node with no live slice before it is torn
    /// down.
    pub orphan_grace_s: u64,
    /// Seconds finished (released, failed) slices are kept before they are forgotten.
    pub terminal_retention_s: u64,
    /// Most finished slices kept; beyond it the oldest are forgotten first (see
    /// docs/DURABILITY.md, "Retention of finished slices").
    pub terminal_retention_max: usize,
    /// Days of hourly energy history kept in the ledger (docs/ENERGY.md, "History"); older hours
    /// are deleted. 0: kept forever.
    pub energy_history_days: u64,
    /// Seconds of one energy attribution window: a GPU's measured energy is attributed to its
    /// holders once per window (see docs/ENERGY.md). 5 to 600; default 60.
    pub attribution_window_s: u64,
    /// Seconds of one observation of the energy fit (the board's counter delta against the
    /// activity over that time; see docs/ENERGY.md, "The live method"). 1 to 60; default 5.
    pub fit_observation_s: u64,
    /// URL clients reach this controller at, which standbys name when refusing calls (default:
    /// `http://` + the listen address).
    pub advertise_url: Option<String>,
    /// etcd settings (ledger = "etcd").
    pub etcd: EtcdSection,
    /// Address to serve Prometheus metrics on (`/metrics`); empty: not served.
    pub metrics_listen: String,
    /// The idle policy (`[idle]`; see [`crate::reclaim::policy`]).
    pub idle: crate::reclaim::IdlePolicy,
    /// Carbon factors of the site (`[carbon]`).
    pub carbon: CarbonSection,
    /// TLS, agent certificates and bearer tokens (`[security]`).
    pub security: SecuritySection,
    /// Per-tenant quotas (`[quotas]`; see [`crate::quota`]).
    pub quotas: crate::quota::Quotas,
}

/// `[security]`: who may call the controller (see [`crate::auth`]). Either all of `tls_cert`,
/// `tls_key`, `agent_ca` and `tokens` are set, or `insecure = true` (loopback only).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySection {
    /// Serve plaintext without authentication: everyone may do everything. For local demos and
    /// tests; refused unless the listen address is loopback.
    pub insecure: bool,
    /// PEM server certificate (chain).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA that signs node agents' client certificates.
    pub agent_ca: Option<PathBuf>,
    /// PEM revocation lists of the agent CA (optional): agents whose certificates they list are
    /// refused, and their open sessions ended (`greenslice-controller revoke` makes one).
    pub agent_crl: Option<PathBuf>,
    /// Tokens file: `[[token]]` entries with name, role (tenant|ops), tenant and sha256 (see
    /// `greenslice-controller token`). Re-read when it changes.
    pub tokens: Option<PathBuf>,
}

/// What the controller serves with: the authenticator and the listener's TLS settings.
pub type ServingSecurity = (
    std::sync::Arc<crate::auth::Authenticator>,
    Option<std::sync::Arc<crate::auth::tls::ServerTls>>,
);

impl SecuritySection {
    /// Checks the settings against the listen address and loads certificates and tokens.
    pub fn resolve(&self, listen: std::net::SocketAddr) -> Result<ServingSecurity, String> {
        use crate::auth::Authenticator;
        use crate::auth::tls::{ServerTls, TlsFiles};
        if self.insecure {
            if !listen.ip().is_loopback() {
                return Err(format!(
                    "insecure mode serves without TLS or authentication and is refused on {listen}: \
                     listen on a loopback address (127.0.0.1) or configure [security] tls_cert, \
                     tls_key, agent_ca and tokens"
                ));
            }
            return Ok((std::sync::Arc::new(Authenticator::Insecure), None));
        }
        let missing: Vec<&str> = [
            ("tls_cert", self.tls_cert.is_none()),
            ("tls_key", self.tls_key.is_none()),
            ("agent_ca", self.agent_ca.is_none()),
            ("tokens", self.tokens.is_none()),
        ]
        .iter()
        .filter(|(_, m)| *m)
        .map(|(n, _)| *n)
        .collect();
        let (Some(cert), Some(key), Some(ca), Some(tokens)) =
            (&self.tls_cert, &self.tls_key, &self.agent_ca, &self.tokens)
        else {
            return Err(format!(
                "security is not configured: set [security] {} in the config (or the matching \
                 --tls-cert/--tls-key/--agent-ca/--tokens flags; `greenslice-controller pki` \
                 and `greenslice-controller token` make them), or pass --insecure for a local, \
                 unauthenticated run on loopback",
                missing.join(", ")
            ));
        };
        let tls = ServerTls::load(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            agent_ca: ca.clone(),
            agent_crl: self.agent_crl.clone(),
        })
        .map_err(|e| e.to_string())?;
        let auth = Authenticator::from_file(tokens.clone()).map_err(|e| e.to_string())?;
        Ok((std::sync::Arc::new(auth), Some(tls)))
    }
}

/// `[etcd]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdSection {
    /// Client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix.
    pub prefix: String,
    /// Leader lease, seconds: a dead leader is replaced within about this long.
    pub lease_ttl_s: u64,
    /// Seconds between compactions of old revisions.
    pub compact_interval_s: u64,
    /// PEM CA of etcd's server certificate (for `https://` endpoints).
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate the controller presents to etcd (etcd `--client-cert-auth`).
    pub cert: Option<PathBuf>,
    /// PEM key of `cert`.
    pub key: Option<PathBuf>,
}

impl Default for EtcdSection {
    fn default() -> Self {
        EtcdSection {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/greenslice/".into(),
            lease_ttl_s: 5,
            compact_interval_s: 60,
            ca_cert: None,
            cert: None,
            key: None,
        }
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            listen: "127.0.0.1:7070".into(),
            policy: "fgd-balanced".into(),
            command_timeout_s: 10,
            ledger: LedgerKind::Redb,
            data_dir: PathBuf::from("/var/lib/greenslice"),
            agent_lease_s: 15,
            shutdown_timeout_s: 5,
            orphan_grace_s: 60,
            terminal_retention_s: 600,
            terminal_retention_max: 100_000,
            energy_history_days: 400,
            attribution_window_s: 60,
            fit_observation_s: 5,
            advertise_url: None,
            etcd: EtcdSection::default(),
            metrics_listen: String::new(),
            idle: Default::default(),
            carbon: CarbonSection::default(),
            security: SecuritySection::default(),
            quotas: Default::default(),
        }
    }
}

/// `[carbon]`: the site's carbon factors for CO2e figures. Unset factors use the documented
/// defaults (PUE 1.56, 475 gCO2e/kWh), flagged as estimates in every report.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CarbonSection {
    /// Site name shown in reports (default "default").
    pub site: Option<String>,
    /// Power usage effectiveness (>= 1).
    pub pue: Option<f64>,
    /// Location-based grid intensity, gCO2e/kWh, constant...
    pub location_g_per_kwh: Option<f64>,
    /// ...or an hourly series: a CSV file of `hour_start_unix_s,g_per_kwh` rows.
    pub location_csv: Option<PathBuf>,
    /// Market-based intensity, gCO2e/kWh (reported beside the location-based figure), constant...
    pub market_g_per_kwh: Option<f64>,
    /// ...or an hourly CSV series.
    pub market_csv: Option<PathBuf>,
}

impl CarbonSection {
    /// The checked site settings; reads the CSV series named.
    pub fn site_carbon(&self) -> Result<crate::energy::SiteCarbon, String> {
        use crate::energy::{HourlySeries, Intensity, SiteCarbon};
        let intensity = |name: &str,
                         constant: Option<f64>,
                         csv: &Option<PathBuf>|
         -> Result<Option<Intensity>, String> {
            match (constant, csv) {
                (Some(_), Some(_)) => Err(format!(
                    "[carbon] give {name}_g_per_kwh or {name}_csv, not both"
                )),
                (Some(v), None) => Ok(Some(Intensity::Constant(v))),
                (None, Some(p)) => {
                    let text = std::fs::read_to_string(p)
                        .map_err(|e| format!("[carbon] cannot read {}: {e}", p.display()))?;
                    let series = HourlySeries::parse_csv(&text)
                        .map_err(|e| format!("[carbon] {}: {e}", p.display()))?;
                    Ok(Some(Intensity::Hourly(series)))
                }
                (None, None) => Ok(None),
            }
        };
        let location = intensity("location", self.location_g_per_kwh, &self.location_csv)?;
        let market = intensity("market", self.market_g_per_kwh, &self.market_csv)?;
        let site = self.site.clone().unwrap_or_else(|| "default".into());
        if self.pue.is_none() && location.is_none() && market.is_none() {
            return Ok(SiteCarbon::unconfigured(&site));
        }
        SiteCarbon::new(&site, self.pue, location, market).map_err(|e| format!("[carbon] {e}"))
    }
}

/// Errors reading the config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
}

impl ControllerConfig {
    /// Reads a TOML config file; unknown keys are errors.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod carbon_tests {
    use super::*;

    #[test]
    fn carbon_section_builds_checked_site_factors() {
        let c: ControllerConfig =
            toml::from_str("[carbon]\nsite = \"dc1\"\npue = 1.2\nlocation_g_per_kwh = 300.0\n")
                .unwrap();
        let site = c.carbon.site_carbon().unwrap();
        let f = site.factors_at(0).unwrap();
        assert_eq!(f.pue.value, 1.2);
        assert!(!f.pue.is_estimate() && !f.location_g_per_kwh.is_estimate());
        assert_eq!(f.location_g_per_kwh.value, 300.0);
        // Nothing configured: defaults, flagged as estimates.
        let f = CarbonSection::default()
            .site_carbon()
            .unwrap()
            .factors_at(0)
            .unwrap();
        assert!(f.pue.is_estimate() && f.location_g_per_kwh.is_estimate());
    }

    #[test]
    fn bad_carbon_settings_are_refused_with_the_reason() {
        let bad: ControllerConfig = toml::from_str("[carbon]\npue = 0.5\n").unwrap();
        assert!(
            bad.carbon.site_carbon().unwrap_err().contains("PUE")
                || bad.carbon.site_carbon().is_err()
        );
        let both: ControllerConfig =
            toml::from_str("[carbon]\nlocation_g_per_kwh = 1.0\nlocation_csv = \"/x.csv\"\n")
                .unwrap();
        assert!(both.carbon.site_carbon().unwrap_err().contains("not both"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("grid.csv");
        std::fs::write(&p, "hour_start_unix_s,g_per_kwh\n0,200\n3600,oops\n").unwrap();
        let c = CarbonSection {
            location_csv: Some(p),
            ..Default::default()
        };
        let e = c.site_carbon().unwrap_err();
        assert!(e.contains("grid.csv"), "{e}");
        assert!(
            toml::from_str::<ControllerConfig>("[carbon]\npeu = 1.2\n").is_err(),
            "unknown keys are refused"
        );
    }
}
