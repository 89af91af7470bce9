//! Command-line options: `--key value`, `--key=value` and the `--smoke` flag.
//! Every size has a full value and a tiny `--smoke` value, chosen by the
//! scenario that reads it.

use std::collections::HashMap;

use anyhow::{bail, Context};

#[derive(Debug, Clone, Default)]
pub struct Opts {
    /// Tiny sizes, no targets: proves the scenario still runs.
    pub smoke: bool,
    values: HashMap<String, String>,
}

impl Opts {
    pub fn parse(args: &[String]) -> anyhow::Result<Opts> {
        let mut opts = Opts::default();
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            let Some(key) = arg.strip_prefix("--") else {
                bail!("unexpected argument {arg:?}: options are --name value");
            };
            if key == "smoke" {
                opts.smoke = true;
            } else if let Some((k, v)) = key.split_once('=') {
                opts.values.insert(k.to_string(), v.to_string());
            } else {
                let v = args
                    .get(i + 1)
                    .with_context(|| format!("--{key} needs a value"))?;
                opts.values.insert(key.to_string(), v.clone());
                i += 1;
            }
            i += 1;
        }
        Ok(opts)
    }

    /// `--key`, or `full` (`smoke` with `--smoke`).
    pub fn usize(&self, key: &str, full: usize, smoke: usize) -> anyhow::Result<usize> {
        match self.values.get(key) {
            Some(v) => v
                .replace('_', "")
                .parse()
                .with_context(|| format!("--{key}={v}: expected a whole number")),
            None => Ok(if self.smoke { smoke } else { full }),
        }
    }

    /// `--key` as a comma-separated list of numbers.
    pub fn list(&self, key: &str, full: &[usize], smoke: &[usize]) -> anyhow::Result<Vec<usize>> {
        match self.values.get(key) {
            Some(v) => {
                v.split(',')
                    .map(|x| {
                        x.trim().replace('_', "").parse().with_context(|| {
                            format!("--{key}={v}: expected numbers like 1000,5000")
                        })
                    })
                    .collect()
            }
            None => Ok(if self.smoke { smoke } else { full }.to_vec()),
        }
    }

    pub fn string(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}
