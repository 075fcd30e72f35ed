use clap::Parser;

fn main() {
    let cli = mesobake::cli::Cli::parse();
    match mesobake::cli::main(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("mesobake: error: {e:#}");
            let interrupted = e.chain().any(|c| c.is::<mesobake::run::Interrupted>());
            let code = if interrupted { 130 } else { 1 };
            std::process::exit(code);
        }
    }
}
