//! The `--config` TOML file: its keys are flag names, and it fills the flags given neither on the
//! command line nor in the environment.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use super::Cli;

/// A `--config` file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read --config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("--config file {path} is not valid TOML: {source}")]
    Toml { path: PathBuf, source: Box<toml::de::Error> },
    #[error("--config file {path}: unknown key `{key}` for `emostream {command}` (keys are its flag names; see --help)")]
    UnknownKey { path: PathBuf, key: String, command: String },
    #[error("--config file {path}: key `{key}` must be a string, number, boolean or list")]
    BadValue { path: PathBuf, key: String },
    #[error("`emostream {command}` needs {flag} {what}")]
    Missing { command: &'static str, flag: &'static str, what: &'static str },
}

fn toml_to_arg(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Array(a) => a.iter().map(toml_to_arg).collect::<Option<Vec<_>>>().map(|v| v.join(",")),
        _ => None,
    }
}

pub(super) fn parse_with_config<I, T>(args: I) -> Result<Cli, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let matches = Cli::command().get_matches_from(args.clone());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let Some(path) = cli.config.clone() else { return Ok(cli) };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
    let table: toml::Table = text.parse().map_err(|source| ConfigError::Toml { path: path.clone(), source: Box::new(source) })?;
    let Some((sub_name, sub_matches)) = matches.subcommand() else { return Ok(cli) };
    let command = Cli::command();
    let sub = command.find_subcommand(sub_name).expect("matched subcommand exists");
    let mut extra: Vec<OsString> = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
            .ok_or_else(|| ConfigError::UnknownKey { path: path.clone(), key: key.clone(), command: sub_name.to_string() })?;
        let from_default = matches!(sub_matches.value_source(arg.get_id().as_str()), None | Some(ValueSource::DefaultValue));
        if !from_default {
            continue;
        }
        let v = toml_to_arg(value).ok_or_else(|| ConfigError::BadValue { path: path.clone(), key: key.clone() })?;
        extra.push(format!("--{long}").into());
        extra.push(v.into());
    }
    if extra.is_empty() {
        return Ok(cli);
    }
    let mut all = args;
    all.extend(extra);
    let matches = Cli::command().get_matches_from(all);
    Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}
