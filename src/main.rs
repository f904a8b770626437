//! The `fresco` binary: a thin shell over the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = fresco::cli::Cli::parse();
    let (level, format) = fresco::cli::log_settings(&cli.command);
    fresco::logging::init(level.as_deref(), format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fresco: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fresco::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fresco: {e}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}
