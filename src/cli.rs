//! The command line (clap derive). `main.rs` parses it and dispatches; nothing here runs.
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// A tenant-aware PostgreSQL connection pooler.
///
/// Without a subcommand, runs the proxy with the given config file.
#[derive(Debug, Parser)]
#[command(name = "pgtenant", version, about)]
pub struct Cli {
    /// The config file.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "PGTENANT_CONFIG",
        default_value = "./proxy.toml"
    )]
    pub config: PathBuf,

    /// Log line format; the level comes from RUST_LOG (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Take the listening socket and the clients over from the pgtenant running with this
    /// config (through its `takeover_socket`), which then exits: a restart or upgrade that
    /// drops no client.
    #[arg(long)]
    pub takeover: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config file and print a summary (exit 1 on error).
    Check {
        /// Also log in to every backend and check that every tenant's search_path schemas
        /// exist there; one line per problem, exit 1 if any.
        #[arg(long)]
        connect: bool,
    },
    /// Print a SCRAM-SHA-256 verifier for a [users] password.
    Verifier {
        /// The password; read from one line of stdin when omitted (safer: not in shell history).
        password: Option<String>,
    },
    /// Start a throwaway local PostgreSQL with four tenants, and the proxy in front of it.
    Demo {
        /// Write the demo's proxy.toml into DIR and keep it after the demo stops (a starting
        /// point for your own); by default it lives in a temp dir removed at exit.
        #[arg(long, value_name = "DIR")]
        keep_config: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("pgtenant").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn config_is_global() {
        let cli = parse(&["check", "--config", "x.toml"]);
        assert_eq!(cli.config, PathBuf::from("x.toml"));
        assert!(matches!(
            cli.command,
            Some(Command::Check { connect: false })
        ));
        let cli = parse(&["check", "--connect"]);
        assert!(matches!(
            cli.command,
            Some(Command::Check { connect: true })
        ));
        let cli = parse(&["--config", "y.toml", "--log-format", "json"]);
        assert_eq!(cli.config, PathBuf::from("y.toml"));
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(cli.command.is_none());
    }

    #[test]
    fn verifier_password_is_optional() {
        assert!(matches!(
            parse(&["verifier"]).command,
            Some(Command::Verifier { password: None })
        ));
        let cli = parse(&["verifier", "pw"]);
        assert!(
            matches!(cli.command, Some(Command::Verifier { password: Some(ref p) }) if p == "pw")
        );
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
