//! The `mlmesh` command: one binary to look at a mesh, talk to it and run its standard
//! nodes from a shell.
//!
//! ```text
//! mlmesh nodes                                   # the live nodes: name, id, roles, address, state
//! mlmesh describe tracker                        # what one node serves (name, id or id prefix)
//! mlmesh sub 'train.**' --count 10               # events as JSON Lines
//! cat metrics.jsonl | mlmesh pub tracking.metrics.logged
//! mlmesh call tracking.run.get '{"run":"0190f3c27c1a70008000000000000001"}'
//! mlmesh call tracking.run.search '{}' --all     # one line per tracker
//! mlmesh hz 'tracking.**'                        # rate and gaps per topic, every second
//! mlmesh doctor                                  # checks that explain problems, with fixes
//! mlmesh run tracker --config tracker.toml       # a standard node, as its own binary runs it
//! mlmesh config print                            # the default config, with comments
//! ```
//!
//! Every command but `run` and `config print` is a short-lived node of its own: it reads
//! the same configuration as nodes (`--config FILE`, `MLMESH_*` environment; a `[store]`
//! section is accepted and ignored), then flags (`--mesh`, `--seed`, `--no-mdns`), and
//! joins the mesh as `mlmesh-cli` with the role `cli`, on ephemeral ports, whatever the
//! file says of its own name, id, roles and ports. It waits for discovery at most
//! `--wait` (1500 ms by default), lists only peers the runtime holds alive or suspect,
//! and leaves the mesh gracefully when done (queued events are flushed first).
//!
//! Payloads are JSON on the command line and on stdin (JSON Lines, one value a line,
//! blank lines skipped), MessagePack on the wire; the conversion is exact and documented
//! in [`json`].
//!
//! ## Exit status
//!
//! | status | meaning |
//! |---:|---|
//! | 0 | OK (also: stdout was closed by its reader, as when `mlmesh sub` is piped into `head`) |
//! | 1-16, 100-102 | the status code of that number: 3 INVALID_ARGUMENT (also JSON input that cannot be read, an invalid topic or pattern), 4 DEADLINE_EXCEEDED (also `sub --count N` not reached by `--timeout`), 5 NOT_FOUND, 9 FAILED_PRECONDITION, 12 UNIMPLEMENTED, 13 INTERNAL, 14 UNAVAILABLE, 100 TOO_LARGE, 101 NO_RESPONDERS (also: no node named NODE, or no provider, within `--wait`), 102 VERSION_MISMATCH, ... |
//! | 64 | the command line is wrong (unknown flag, missing argument) |
//! | 69 | `doctor` found a problem |
//! | 70 | mlmesh itself failed (the node could not start, an I/O error) |
//! | 78 | the configuration is invalid (file, environment or flags) |
//!
//! Errors go to stderr as one line, `mlmesh: <what is wrong>`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use mlmesh::{Code, Status};

mod call;
mod doctor;
mod events;
mod io;
pub mod json;
mod nodes;
mod peers;
mod probe;
mod session;

/// The exit status table, for `--help`.
const EXIT_HELP: &str = "\
Exit status: 0 OK; otherwise the status code's number: 3 INVALID_ARGUMENT (also bad JSON
input, a bad topic), 4 DEADLINE_EXCEEDED, 5 NOT_FOUND, 9 FAILED_PRECONDITION, 12
UNIMPLEMENTED, 13 INTERNAL, 14 UNAVAILABLE, 100 TOO_LARGE, 101 NO_RESPONDERS (also no such
node or provider within --wait), 102 VERSION_MISMATCH (every code 1-16, 100-102 likewise);
64 command-line error, 69 doctor found a problem, 70 mlmesh failed, 78 invalid config.

Configuration: defaults < --config FILE < MLMESH_* environment < flags. Logs: MLMESH_LOG.";

/// The JSON mapping, for the `--help` of pub, call and sub (a macro, to be `concat!`ed).
macro_rules! json_help {
    () => {
        "JSON <-> MessagePack (exact, both ways):
  null, true/false, strings, arrays  as themselves
  integers (-2^63..2^64-1)           int; an integer outside that range is an error
  1.0, 0.5, 1e+300, -0.0             float 64 (a fraction or an exponent makes a float)
  {\"$float\": \"NaN\"}                  float 64 NaN; also \"Infinity\", \"-Infinity\", \"0x<16 hex bits>\"
  {\"$float32\": 1.5}                  float 32 (a number, or the strings above with 8 hex digits)
  {\"$bytes\": \"00ff\"}                 bin, as hex
  {\"$ext\": [5, \"00ff\"]}              ext type 5
  {\"$map\": [[1, \"a\"]]}               a map with non-string or repeated keys (or one `$` tag key)
  any other object                   a map with string keys, in order; a repeated key is an error"
    };
}
pub(crate) use json_help;

/// The mlmesh command: look at a mesh, talk to it, run its standard nodes.
#[derive(Debug, Parser)]
#[command(name = "mlmesh", version, after_help = EXIT_HELP)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Global {
    /// A TOML config file (the nodes' format; `mlmesh config print` shows it).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The mesh to join (overrides node.mesh).
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) mesh: Option<String>,
    /// A seed node's rpc endpoint, tcp://HOST:PORT, added to discovery.seeds (repeatable).
    #[arg(long = "seed", global = true, value_name = "ENDPOINT")]
    pub(crate) seeds: Vec<String>,
    /// Turn mDNS off (find peers through seeds only).
    #[arg(long, global = true)]
    pub(crate) no_mdns: bool,
    /// The longest wait for discovery, e.g. 1500ms, 2s [default: 1500ms; doctor: 3s].
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) wait: Option<Duration>,
}

#[derive(Debug, Subcommand)]
enum Command {
    Nodes(nodes::NodesArgs),
    Describe(nodes::DescribeArgs),
    Sub(events::SubArgs),
    Pub(events::PubArgs),
    Call(call::CallArgs),
    Hz(events::HzArgs),
    Doctor(doctor::DoctorArgs),
    Run(RunArgs),
    /// The configuration: `mlmesh config print` prints the defaults, with comments.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// Run a standard node until Ctrl-C or SIGTERM, as its own binary does.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
The node reads --config FILE and MLMESH_* like its binary (mlmesh-tracker, mlmesh-registry),
with its [store] section, then --mesh, --seed and --no-mdns; it prints one JSON ready line: {\"id\":..,\"name\":..,\"pub\":..,\"rpc\":..,\"store\":..}.

Example:
  MLMESH_STORE__DATA_DIR=/var/lib/mlmesh/tracker mlmesh run tracker --config mesh.toml")]
struct RunArgs {
    /// Which node: `tracker` or `registry`.
    #[arg(value_name = "NODE_KIND")]
    kind: NodeKindArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum NodeKindArg {
    /// The experiment tracker (tracking/1).
    Tracker,
    /// The model registry (registry/1).
    Registry,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the default configuration with comments (the runtime's sections and [store]).
    #[command(
        after_help = "Example:\n  mlmesh config print > mesh.toml && mlmesh nodes --config mesh.toml"
    )]
    Print,
}

/// The `[store]` section of the standard nodes, documented like the runtime's defaults.
const STORE_TOML: &str = "
[store]
# Standard nodes only (mlmesh-tracker, mlmesh-registry, mlmesh run ...); others ignore it.
# The data directory, created if missing. One node owns it at a time (it is locked).
data_dir = \"mlmesh-data\"
# \"normal\": an acknowledged write survives a crash of the node (kill -9); a power loss
# may lose the last commits. \"full\": it survives a power loss too (an fsync per commit).
durability = \"normal\"
# How long a request's reply is kept to answer a retry of it (s).
request_retention_s = 86400
";

/// The default configuration printed by `mlmesh config print`.
pub fn default_config_toml() -> String {
    format!("{}{STORE_TOML}", mlmesh::Config::default_toml())
}

/// How a command failed: the exit status and a one-line message for stderr.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

/// Exit status of a wrong command line.
pub(crate) const EXIT_USAGE: u8 = 64;
/// Exit status of `doctor` when it found a problem.
pub(crate) const EXIT_PROBLEMS: u8 = 69;
/// Exit status of a failure of mlmesh itself.
pub(crate) const EXIT_INTERNAL: u8 = 70;
/// Exit status of an invalid configuration.
pub(crate) const EXIT_CONFIG: u8 = 78;

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A failed call: its status code is the exit status.
    pub(crate) fn status(status: &Status) -> Self {
        Self::new(exit_code(status.code), status.to_string())
    }

    /// The status code `code` with `message`.
    pub(crate) fn code(code: Code, message: impl Into<String>) -> Self {
        Self::status(&Status::error(code, message))
    }

    /// Input that cannot be used (INVALID_ARGUMENT).
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(exit_code(Code::InvalidArgument), message)
    }

    /// mlmesh itself failed.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(EXIT_INTERNAL, message)
    }

    /// Not a failure: stdout's reader went away, so the command ends quietly with 0.
    pub(crate) fn quiet() -> Self {
        Self::new(0, "")
    }
}

/// The exit status of a status code: its number.
pub(crate) fn exit_code(code: Code) -> u8 {
    u8::try_from(code.as_u16()).unwrap_or(2)
}

/// Runs the `mlmesh` command with the process's arguments; returns its exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    crate::host::init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mlmesh: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_INTERNAL);
        }
    };
    let outcome = runtime.block_on(run(cli));
    // A thread blocked reading stdin must not hold the process.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("mlmesh: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let g = &cli.global;
    match cli.command {
        Command::Nodes(a) => nodes::nodes(g, a).await,
        Command::Describe(a) => nodes::describe(g, a).await,
        Command::Sub(a) => events::sub(g, a).await,
        Command::Pub(a) => events::publish(g, a).await,
        Command::Call(a) => call::call(g, a).await,
        Command::Hz(a) => events::hz(g, a).await,
        Command::Doctor(a) => doctor::doctor(g, a).await,
        Command::Run(a) => {
            let kind = match a.kind {
                NodeKindArg::Tracker => crate::host::NodeKind::Tracker,
                NodeKindArg::Registry => crate::host::NodeKind::Registry,
            };
            let (config, store) = session::load_with_store(g)?;
            crate::host::serve_node(kind, config, &store)
                .await
                .map_err(|e| Failure::internal(e.to_string()))
        }
        Command::Config(ConfigCommand::Print) => {
            let mut out = io::Out::new();
            out.text(&default_config_toml())?;
            out.flush()
        }
    }
}

/// Parses a duration: a number and a unit, `ms`, `s`, `m` or `h` (`1500ms`, `1.5s`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 1500ms, 2s, 1.5m"))?;
    let scale = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" => return Err(format!("{s:?} needs a unit: {s}ms or {s}s")),
        _ => return Err(format!("{s:?}: the unit must be ms, s, m or h")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("1500").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("5x").unwrap_err().contains("ms, s, m or h"));
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn the_printed_config_is_the_default_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.toml");
        std::fs::write(&path, default_config_toml()).unwrap();
        let (config, store) =
            mlmesh::Config::load_with::<crate::store::StoreSection>(Some(&path), "store").unwrap();
        assert_eq!(config.node, mlmesh::Config::default().node);
        assert_eq!(config.limits, mlmesh::Config::default().limits);
        assert_eq!(store, crate::store::StoreSection::default());
    }

    #[test]
    fn every_status_code_has_its_exit_status() {
        for &code in Code::ALL {
            assert_eq!(u16::from(exit_code(code)), code.as_u16());
        }
        assert!(![EXIT_USAGE, EXIT_PROBLEMS, EXIT_INTERNAL, EXIT_CONFIG]
            .iter()
            .any(|e| Code::ALL.iter().any(|c| u16::from(*e) == c.as_u16())));
    }

    #[test]
    fn every_command_has_an_example_in_its_help() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut stack: Vec<clap::Command> = cmd.get_subcommands().cloned().collect();
        while let Some(mut sub) = stack.pop() {
            stack.extend(sub.get_subcommands().cloned());
            if sub.has_subcommands() {
                continue;
            }
            let help = sub.render_long_help().to_string();
            assert!(
                help.contains("Example"),
                "{} has no example:\n{help}",
                sub.get_name()
            );
        }
    }
}
