use std::{
    io::{ErrorKind, IsTerminal, Write},
    process::ExitCode,
};

use multiarch_operator::{
    api,
    cli::{Cli, Command, LogFormat},
    controller, crypto, logs,
    oneshot::{self, Outcome},
    verify,
};

fn main() -> ExitCode {
    // Before anything else (see crypto::install): a FIPS build that is not stops here, even
    // before `--help`.
    if let Err(message) = crypto::install() {
        eprintln!("multiarch-operator: {message}");
        return ExitCode::FAILURE;
    }
    let cli = parse();
    // `build` shows its own progress lines: only warnings from the log by default.
    let default_level = match cli.command {
        // aws_config warns about every source of the credential chain it tried (the instance
        // metadata service on a laptop); the command says what failed itself, in one line.
        Command::Build(_) | Command::Logs(_) | Command::Verify(_) => "warn,aws_config=error",
        Command::Controller(_) => "info,aws_config=error,aws_smithy_runtime=warn,hyper_util=warn,tower=warn",
        _ => "warn,multiarch_operator=info",
    };
    init_logging(cli.log_format, default_level);
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("multiarch-operator: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The command line. Installed as a kubectl plugin (`kubectl-mab`, a link to this binary), usage
/// and help name it `kubectl mab`.
fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let invoked = std::env::args_os().next().and_then(|a| {
        std::path::Path::new(&a)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
    });
    let mut command = Cli::command();
    if invoked.as_deref() == Some("kubectl-mab") {
        command = command.bin_name("kubectl mab").name("kubectl-mab");
    }
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Crd => out(&api::crd_yaml().map_err(|e| format!("cannot render the CRD: {e}"))?),
        Command::Version => out(&format!(
            "multiarch-operator {}\ncrypto: {}\n",
            env!("CARGO_PKG_VERSION"),
            crypto::describe()
        )),
        Command::Build(args) => match runtime()?.block_on(oneshot::run(&args))? {
            Outcome::Succeeded(image) => out(&format!("{image}\n")),
            Outcome::DryRun(requests) => out(&requests),
            Outcome::Submitted => Ok(ExitCode::SUCCESS),
            Outcome::Failed(message) => Err(message),
        },
        Command::Logs(args) => {
            runtime()?.block_on(logs::run(&args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Controller(args) => {
            runtime()?.block_on(controller::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(args) => out(&runtime()?.block_on(verify::run(&args))?),
    }
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn out(text: &str) -> Result<ExitCode, String> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(format!("cannot write to standard output: {e}")),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Logs go to stderr; `RUST_LOG` filters them.
fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colours only on a terminal: a pod's log is a file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
