use clap::Parser;
use mesobake::output::{self, exit};

/// Whether `--json` is on the command line (before any `--`), for errors clap reports
/// before there is a parsed command line.
fn json_requested() -> bool {
    std::env::args()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

fn main() {
    let cli = match mesobake::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let informational =
                matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
            if informational || !json_requested() {
                // clap prints help and version on stdout (0), usage errors on stderr (2).
                e.exit();
            }
            let _ = e.print();
            mesobake::outln!("{}", mesobake::failure::usage_error_json(&e.to_string()));
            output::finish();
            std::process::exit(exit::USAGE);
        }
    };
    let json = cli.json;
    let code = match mesobake::cli::main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mesobake: error: {e:#}");
            if json {
                mesobake::outln!(
                    "{}",
                    serde_json::to_string_pretty(&mesobake::failure::error_json(&e))
                        .unwrap_or_else(|_| "{}".into())
                );
            }
            mesobake::failure::classify(&e).status
        }
    };
    if let Some(w) = output::finish() {
        eprintln!("mesobake: error: {w}");
        if code == exit::SUCCESS {
            std::process::exit(exit::RUNTIME);
        }
    }
    std::process::exit(code);
}
