//! `greenslice`: the tenant and ops command line, the demo (the main job) and the benchmarks.

mod cli;
mod demo;
mod output;
mod reclaim_cli;
mod report_cmd;
mod timearg;

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: the control plane allocates and frees many small buffers per
/// call (HTTP/2 frames, protobuf messages, records), and glibc's malloc and free took 15 to 20% of
/// the control-plane benchmark's CPU (see docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// greenslice: fractional GPU slices (MIG or time-sliced shares), idle reclaim, per-tenant energy.
#[derive(Debug, Parser)]
#[command(
    version,
    propagate_version = true,
    arg_required_else_help = true,
    after_help = "A tenant needs two environment variables:\n  GREENSLICE_CONTROLLER  the controller URL (e.g. http://127.0.0.1:7070)\n  GREENSLICE_TENANT      your tenant (team) name\n(and GREENSLICE_TOKEN when the controller checks tokens).\n\nExample: greenslice request --profile 3g.40gb"
)]
struct Cli {
    /// Controller URL.
    #[arg(
        long,
        global = true,
        env = "GREENSLICE_CONTROLLER",
        default_value = "http://127.0.0.1:7070"
    )]
    controller: String,
    /// Bearer token (tenant or ops) from the controller's operator.
    #[arg(long, global = true, env = "GREENSLICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA that signed the controller's certificate (for https:// controller URLs).
    #[arg(long, global = true, env = "GREENSLICE_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = output::Format::Table)]
    output: output::Format,
    /// Time zone for the dates shown (tables, CSV, HTML): UTC, a fixed offset such as +02:00, or an
    /// IANA name such as Europe/Berlin (from the system's tzdata).
    #[arg(long, global = true, env = "GREENSLICE_TZ", default_value = "UTC", allow_hyphen_values = true, value_parser = greenslice_controller::report::Zone::parse)]
    tz: greenslice_controller::report::Zone,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ask for a GPU slice: whole GPUs, a MIG profile, or a time-sliced share.
    #[command(after_help = "Example: greenslice request --share 0.25 --memory 10GiB")]
    Request(cli::RequestArgs),
    /// Show one slice.
    #[command(after_help = "Example: greenslice get s-0123456789ab")]
    Get {
        /// Slice id.
        slice: String,
    },
    /// List slices.
    #[command(after_help = "Example: greenslice list --all -o json")]
    List(cli::ListArgs),
    /// Release a slice.
    #[command(after_help = "Example: greenslice release s-0123456789ab")]
    Release {
        /// Slice id.
        slice: String,
    },
    /// Stream slice events.
    #[command(after_help = "Example: greenslice watch --tenant team-a")]
    Watch {
        /// Only this tenant's slices.
        #[arg(long, env = "GREENSLICE_TENANT")]
        tenant: Option<String>,
        /// Replay the events after this revision first (the last one printed, or a list's), then
        /// go on live; refused with REVISION_COMPACTED when they are no longer kept.
        #[arg(long)]
        from_revision: Option<u64>,
    },
    /// Nodes, GPUs, slices and free capacity.
    #[command(after_help = "Example: greenslice inventory -o json")]
    Inventory,
    /// Drain a node: nothing new is placed there. A connected node keeps its slices until they are
    /// released; an unreachable node's slices are marked lost.
    #[command(after_help = "Example: greenslice drain node-a")]
    Drain {
        /// Node name.
        node: String,
    },
    /// Make a drained node schedulable again.
    #[command(after_help = "Example: greenslice undrain node-a")]
    Undrain {
        /// Node name.
        node: String,
    },
    /// Utilization history of a slice, a tenant's slices or a node's GPUs, and idle state.
    #[command(after_help = "Example: greenslice usage --tenant team-a --from 2h")]
    Usage(reclaim_cli::UsageArgs),
    /// Keep a slice from idle reclaim for a while.
    #[command(after_help = "Example: greenslice keep s-0123456789ab --for 2h")]
    Keep(reclaim_cli::KeepArgs),
    /// Per-tenant energy and CO2e report (table, JSON, CSV or self-contained HTML).
    #[command(
        after_help = "Example: greenslice report --from 2026-11-01 --format html --out report.html"
    )]
    Report(report_cmd::ReportArgs),
    /// Run the whole system in one process on simulated nodes with a synthetic multi-tenant workload.
    #[command(after_help = "Example: greenslice demo --nodes 6 --requests 400")]
    Demo(demo::DemoArgs),
    /// Benchmarks.
    #[command(
        subcommand,
        after_help = "Example: greenslice bench control-plane --nodes 128"
    )]
    Bench(greenslice::bench::BenchCommand),
    /// Run the controller (the same as the greenslice-controller binary).
    #[command(hide = true)]
    Controller(Box<greenslice_controller::cli::ControllerArgs>),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Controller(_) = cli.command {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    } else if matches!(cli.command, Command::Demo(_) | Command::Bench(_)) {
        tracing_subscriber::fmt()
            // The demo prints its own progress; logs only for errors unless RUST_LOG says otherwise.
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "error".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    let fmt = cli.output;
    let tz = cli.tz.clone();
    let conn =
        match greenslice_proto::client::ClientTls::from_files(cli.ca_cert.as_deref(), None, None) {
            Ok(tls) => greenslice_proto::client::Conn {
                url: cli.controller.clone(),
                tls,
                token: cli.token.clone(),
            },
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(cli::exit::INVALID);
            }
        };
    let result = match cli.command {
        Command::Request(a) => cli::request(&conn, fmt, a).await,
        Command::Get { slice } => cli::get(&conn, fmt, &slice).await,
        Command::List(a) => cli::list(&conn, fmt, a).await,
        Command::Release { slice } => cli::release(&conn, fmt, &slice).await,
        Command::Watch {
            tenant,
            from_revision,
        } => cli::watch(&conn, fmt, tenant, from_revision, &tz).await,
        Command::Inventory => cli::inventory(&conn, fmt).await,
        Command::Drain { node } => cli::drain(&conn, fmt, &node).await,
        Command::Undrain { node } => cli::undrain(&conn, fmt, &node).await,
        Command::Usage(a) => reclaim_cli::usage(&conn, fmt, a, &tz).await,
        Command::Keep(a) => reclaim_cli::keep(&conn, fmt, a, &tz).await,
        Command::Report(a) => report_cmd::run(&conn, a, &tz).await,
        Command::Demo(a) => demo::run(a, &tz).await,
        Command::Bench(b) => {
            greenslice::bench::run(b, matches!(fmt, output::Format::Json), &cli.controller).await
        }
        Command::Controller(a) => return greenslice_controller::cli::run(*a).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match (fmt, e.downcast_ref::<tonic::Status>()) {
                // A program reads the refusal's reason and details, not the English.
                (output::Format::Json, Some(s)) => {
                    eprintln!("{}", serde_json::json!({ "error": output::error_json(s) }));
                }
                (_, Some(s)) => {
                    eprintln!("error: {e:#}");
                    let details = output::error_detail_lines(s);
                    if !details.is_empty() {
                        eprintln!("{details}");
                    }
                }
                _ => eprintln!("error: {e:#}"),
            }
            ExitCode::from(cli::exit_code(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use timearg::TimeArg;

    /// Every time flag of every command, with the arguments the command needs besides it.
    const TIME_FLAGS: [(&[&str], &str); 4] = [
        (&["usage", "s-1"], "--from"),
        (&["usage", "s-1"], "--to"),
        (&["report"], "--from"),
        (&["report"], "--to"),
    ];

    fn parsed(cmd: &[&str], flag: &str, value: &str) -> Result<TimeArg, clap::Error> {
        let mut argv = vec!["greenslice"];
        argv.extend_from_slice(cmd);
        argv.extend_from_slice(&[flag, value]);
        let cli = Cli::try_parse_from(argv)?;
        Ok(match (cli.command, flag) {
            (Command::Usage(a), "--from") => a.from.expect("set"),
            (Command::Usage(a), _) => a.to.expect("set"),
            (Command::Report(a), "--from") => a.from,
            (Command::Report(a), _) => a.to,
            (c, _) => panic!("unexpected command {c:?}"),
        })
    }

    #[test]
    fn every_time_flag_of_every_command_accepts_the_same_forms() {
        let forms = [
            ("now", TimeArg::Now),
            ("10m", TimeArg::Ago(600_000)),
            ("-10m", TimeArg::Ago(600_000)),
            ("2h", TimeArg::Ago(7_200_000)),
            ("2026-11-01", TimeArg::At(1_793_491_200_000)),
            ("2026-11-01T00:00:00Z", TimeArg::At(1_793_491_200_000)),
            ("1793491200000", TimeArg::At(1_793_491_200_000)),
        ];
        for (cmd, flag) in TIME_FLAGS {
            for (value, want) in forms {
                let got = parsed(cmd, flag, value)
                    .unwrap_or_else(|e| panic!("{cmd:?} {flag} {value}: {e}"));
                assert_eq!(got, want, "{cmd:?} {flag} {value}");
            }
            for bad in ["yesterday", "10x", "2026-13-01"] {
                let e = parsed(cmd, flag, bad).expect_err(bad);
                assert_eq!(e.exit_code(), 2, "{cmd:?} {flag} {bad}");
                assert!(
                    e.to_string().contains("10m or -10m"),
                    "{cmd:?} {flag} {bad}: {e}"
                );
            }
        }
    }

    #[test]
    fn every_visible_command_shows_an_example() {
        let cmd = <Cli as clap::CommandFactory>::command();
        assert!(
            cmd.is_arg_required_else_help_set(),
            "no arguments print the help"
        );
        let top = cmd
            .get_after_help()
            .map(|h| h.to_string())
            .unwrap_or_default();
        assert!(top.contains("GREENSLICE_CONTROLLER") && top.contains("GREENSLICE_TENANT"));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.contains(&format!("Example: greenslice {}", sub.get_name())),
                "{} has no example: {help:?}",
                sub.get_name()
            );
        }
    }

    #[test]
    fn every_time_flag_has_the_same_help_about_its_forms() {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        for (path, flag) in TIME_FLAGS {
            let sub = cmd.find_subcommand_mut(path[0]).expect("command");
            let arg = sub
                .get_arguments()
                .find(|a| a.get_long() == flag.strip_prefix("--"))
                .expect("flag");
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(
                help.ends_with(timearg::time_forms!()),
                "{path:?} {flag}: {help}"
            );
        }
    }
}
