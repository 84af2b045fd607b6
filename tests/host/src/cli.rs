//! Command-line arguments, a subset of `spin up` so the same instructions work with either.

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;

pub const USAGE: &str = "\
Usage: spin-test-host [--from PATH] [--listen ADDR] [--variable NAME=VALUE]...
                      [--state-dir DIR] [--runtime-config-file PATH]

  -f, --from PATH                spin.toml, or a directory holding one [default: spin.toml]
      --listen ADDR              address to serve on [default: 127.0.0.1:3000]
      --variable NAME=VALUE      set an application variable (repeatable); overrides
                                 SPIN_VARIABLE_<NAME> and the manifest default
      --state-dir DIR            where the default key-value store lives
                                 [default: .spin beside the manifest]
      --runtime-config-file PATH Spin runtime config: [key_value_store.<label>] of
                                 type 'spin' (SQLite, path) or 'redis' (url)
  -h, --help                     print this help";

#[derive(Debug)]
pub struct Args {
    pub manifest: PathBuf,
    pub listen: SocketAddr,
    pub variables: Vec<(String, String)>,
    pub state_dir: Option<PathBuf>,
    pub runtime_config: Option<PathBuf>,
}

/// `Ok(None)` means help was asked for.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Args>> {
    let mut from = PathBuf::from("spin.toml");
    let mut listen: SocketAddr = "127.0.0.1:3000".parse()?;
    let mut variables = Vec::new();
    let mut state_dir = None;
    let mut runtime_config = None;

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // Accept both `--flag value` and `--flag=value`, as clap does for spin.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => args
                    .next()
                    .with_context(|| format!("{name} needs a value\n\n{USAGE}")),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "-f" | "--from" | "--file" => from = PathBuf::from(value(&flag)?),
            "--listen" => {
                let v = value(&flag)?;
                listen = v
                    .parse()
                    .with_context(|| format!("--listen {v:?} is not an IP:PORT address"))?;
            }
            "--variable" => {
                let v = value(&flag)?;
                let Some((name, val)) = v.split_once('=') else {
                    bail!("--variable {v:?} must be NAME=VALUE");
                };
                variables.push((name.trim().to_string(), val.to_string()));
            }
            "--state-dir" => state_dir = Some(PathBuf::from(value(&flag)?)),
            "--runtime-config-file" => runtime_config = Some(PathBuf::from(value(&flag)?)),
            other => bail!("unexpected argument {other:?}\n\n{USAGE}"),
        }
    }

    let manifest = if from.is_dir() {
        from.join("spin.toml")
    } else {
        from
    };
    Ok(Some(Args {
        manifest,
        listen,
        variables,
        state_dir,
        runtime_config,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Option<Args>> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_and_overrides() {
        let a = parse_strs(&[]).unwrap().unwrap();
        assert_eq!(a.manifest, PathBuf::from("spin.toml"));
        assert_eq!(a.listen.to_string(), "127.0.0.1:3000");

        let a = parse_strs(&[
            "--listen=127.0.0.1:0",
            "--variable",
            "a=b=c",
            "--variable=x=",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.listen.port(), 0);
        assert_eq!(
            a.variables,
            vec![("a".into(), "b=c".into()), ("x".into(), "".into())]
        );
        assert!(parse_strs(&["--bogus"]).is_err());
        assert!(parse_strs(&["--variable", "novalue"]).is_err());
        assert!(parse_strs(&["--help"]).unwrap().is_none());
    }
}
