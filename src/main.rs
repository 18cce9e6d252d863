use std::{io::Read, process::ExitCode};

use clap::Parser;
use multiarch_operator::{
    api::{self, MultiArchBuild},
    cli::{BuildArgs, Cli, Command},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("multiarch-operator: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Crd => {
            print!(
                "{}",
                api::crd_yaml().map_err(|e| format!("cannot render the CRD: {e}"))?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Version => {
            println!("multiarch-operator {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Build(args) => build(&args),
        Command::Controller(_) => Err("the controller is not implemented yet; `build` and `crd` work".into()),
    }
}

fn build(args: &BuildArgs) -> Result<ExitCode, String> {
    let build = read_build(args)?;
    api::validate(&build.spec).map_err(|e| format!("{}: invalid spec: {e}", args.file.display()))?;
    Err("running builds is not implemented yet; the spec is valid".into())
}

fn read_build(args: &BuildArgs) -> Result<MultiArchBuild, String> {
    let text = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        text
    } else {
        std::fs::read_to_string(&args.file).map_err(|e| format!("cannot read {}: {e}", args.file.display()))?
    };
    serde_yaml::from_str(&text).map_err(|e| format!("{}: not a MultiArchBuild: {e}", args.file.display()))
}
