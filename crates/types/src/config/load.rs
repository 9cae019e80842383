//! Reading a configuration file: parse, validate, resolve relative paths.

use std::path::{Path, PathBuf};

use super::datastores::DatastoreKind;
use super::error::{ConfigError, line_col, span_of};
use super::root::Config;
use crate::watch::ReceiverConfig;

impl Config {
    /// Read, parse, validate and resolve relative paths of a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            field: None,
            message: format!("unable to read configuration: {e}"),
        })?;
        let mut cfg = Config::parse(&src, path)?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = std::path::absolute(&base).unwrap_or(base);
        cfg.resolve_paths(&base);
        // The TSIG secret is checked now, not at the first switch.
        if let Some(dns) = &cfg.dns
            && let Err(message) = dns.read_secret()
        {
            let field = ["dns".to_string(), "secret_file".to_string()];
            let (line, column) = span_of(&src, &field).map_or((0, 0), |s| line_col(&src, s.start));
            return Err(ConfigError {
                file: path.to_path_buf(),
                line,
                column,
                field: Some(field.join(".")),
                message,
            });
        }
        Ok(cfg)
    }

    /// Parse and validate configuration text; `file` is only used in errors.
    pub fn parse(src: &str, file: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(src).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| line_col(src, s.start));
            ConfigError {
                file: file.to_path_buf(),
                line,
                column,
                field: None,
                message: e.message().trim().to_string(),
            }
        })?;
        if let Err((path, message)) = cfg.validate() {
            let (line, column) = span_of(src, &path).map_or((0, 0), |s| line_col(src, s.start));
            return Err(ConfigError {
                file: file.to_path_buf(),
                line,
                column,
                field: Some(path.join(".")),
                message,
            });
        }
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.controller.data_dir);
        self.controller.rules.iter_mut().for_each(abs);
        self.controller.runbooks.iter_mut().for_each(abs);
        self.controller.tls_cert.iter_mut().for_each(abs);
        self.controller.tls_key.iter_mut().for_each(abs);
        if let Some(d) = &mut self.dns {
            abs(&mut d.secret_file);
        }
        if let Some(p) = &mut self.pki {
            abs(&mut p.dir);
        }
        for a in self.agents.values_mut() {
            a.token_file.iter_mut().for_each(abs);
        }
        for r in self.receivers.values_mut() {
            match r {
                ReceiverConfig::Webhook { secret_file, .. } => {
                    secret_file.iter_mut().for_each(abs);
                }
                ReceiverConfig::Smtp { password_file, .. } => {
                    password_file.iter_mut().for_each(abs);
                }
            }
        }
        self.hosts.values_mut().for_each(|h| abs(&mut h.disk_dir));
        let data_dir = self.controller.data_dir.clone();
        for (name, d) in self.datastores.iter_mut() {
            d.path.iter_mut().for_each(abs);
            if let Some(e) = &mut d.encryption {
                e.key_file.iter_mut().for_each(abs);
            }
            d.store_key_file.iter_mut().for_each(abs);
            if d.store_key_file.is_none() && d.kind != DatastoreKind::Local {
                d.store_key_file = Some(
                    data_dir
                        .join("store-keys")
                        .join(format!("{name}.store-key")),
                );
            }
        }
    }
}
