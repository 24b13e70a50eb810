//! `synwatch run`'s CrowdSec options (clap) and their layering into the agent's
//! [`Settings`].

use std::path::PathBuf;
use std::time::Duration;

use synwatch_agent::crowdsec::Settings;

use crate::config::FileConfig;

/// `synwatch run`'s CrowdSec options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CrowdsecArgs {
    /// Push every ban to a CrowdSec Local API as an alert, with these machine credentials
    /// (CrowdSec's local_api_credentials.yaml, from `cscli machines add NAME --auto -f
    /// FILE`)
    #[arg(long, env = "SYNWATCH_CROWDSEC_CREDENTIALS", value_name = "FILE")]
    pub crowdsec_credentials: Option<PathBuf>,

    /// Enforce the fleet's ban decisions from the CrowdSec Local API, with this bouncer
    /// key (a file holding the output of `cscli bouncers add NAME -o raw`)
    #[arg(long, env = "SYNWATCH_CROWDSEC_BOUNCER_KEY_FILE", value_name = "FILE")]
    pub crowdsec_bouncer_key_file: Option<PathBuf>,

    /// The Local API's URL [default: the url of --crowdsec-credentials]
    #[arg(long, env = "SYNWATCH_CROWDSEC_URL", value_name = "URL")]
    pub crowdsec_url: Option<String>,

    /// How often to pull the fleet's decisions [default: 10s]
    #[arg(long, env = "SYNWATCH_CROWDSEC_PULL", value_name = "DUR")]
    pub crowdsec_pull: Option<String>,
}

/// Flags (and their environment variables) over the file's keys.
/// `label` names an option in messages (its flag, or its variable when the value came
/// from the environment).
pub fn settings(
    args: &CrowdsecArgs,
    file: &FileConfig,
    label: impl Fn(&str) -> String,
) -> Result<Settings, String> {
    let (text, option) = match (&args.crowdsec_pull, &file.crowdsec_pull) {
        (Some(t), _) => (t.clone(), label("crowdsec_pull")),
        (None, Some(v)) => (crate::config::toml_number(v), "crowdsec_pull".to_owned()),
        (None, None) => ("10s".to_owned(), label("crowdsec_pull")),
    };
    let nanos = crate::config::parse_duration(&text)
        .map_err(|why| format!("invalid {option} '{text}': {why}"))?;
    if nanos < 1_000_000_000 {
        return Err(format!("invalid {option} '{text}': must be at least 1s"));
    }
    let url = args
        .crowdsec_url
        .clone()
        .or_else(|| file.crowdsec_url.clone());
    if let Some(u) = &url {
        let option = if args.crowdsec_url.is_some() {
            label("crowdsec_url")
        } else {
            "crowdsec_url".to_owned()
        };
        synwatch_agent::crowdsec::lapi::base_url(u).map_err(|why| format!("{option}: {why}"))?;
    }
    Ok(Settings {
        credentials: args
            .crowdsec_credentials
            .clone()
            .or_else(|| file.crowdsec_credentials.clone()),
        key_file: args
            .crowdsec_bouncer_key_file
            .clone()
            .or_else(|| file.crowdsec_bouncer_key_file.clone()),
        url,
        pull: Duration::from_nanos(nanos.unsigned_abs()),
    })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    fn flag(id: &str) -> String {
        format!("--{}", id.replace('_', "-"))
    }

    #[test]
    fn settings_layer_flags_over_the_file_and_check_the_interval() {
        let file: FileConfig = toml::from_str(
            "crowdsec_pull = \"30s\"\ncrowdsec_url = \"http://10.0.0.1:8080\"\ncrowdsec_bouncer_key_file = \"/k\"\n",
        )
        .unwrap();
        let s = settings(&CrowdsecArgs::default(), &file, flag).unwrap();
        assert_eq!(s.pull, Duration::from_secs(30));
        assert_eq!(s.url.as_deref(), Some("http://10.0.0.1:8080"));
        assert!(s.enabled());
        let args = CrowdsecArgs {
            crowdsec_pull: Some("2s".into()),
            ..CrowdsecArgs::default()
        };
        let s = settings(&args, &file, flag).unwrap();
        assert_eq!(s.pull, Duration::from_secs(2));
        assert!(s.toml().contains("crowdsec_pull = \"2s\"\n"));
        let args = CrowdsecArgs {
            crowdsec_pull: Some("10ms".into()),
            ..CrowdsecArgs::default()
        };
        let e = settings(&args, &file, flag).unwrap_err();
        assert!(
            e.contains("--crowdsec-pull") && e.contains("at least 1s"),
            "{e}"
        );
        let args = CrowdsecArgs {
            crowdsec_url: Some("lapi:8080".into()),
            ..CrowdsecArgs::default()
        };
        let e = settings(&args, &FileConfig::default(), flag).unwrap_err();
        assert!(e.contains("--crowdsec-url"), "{e}");
        let s = settings(&CrowdsecArgs::default(), &FileConfig::default(), flag).unwrap();
        assert!(!s.enabled());
        assert_eq!(s.toml(), "crowdsec_pull = \"10s\"\n");
    }
}
