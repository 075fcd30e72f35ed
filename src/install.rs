//! What an installed mesobake ships beside its binary, generated from the clap
//! definition: shell completions (`mesobake completions SHELL`) and the man page
//! (`mesobake man`). `ci/deb/build.sh` packages both.

use std::io::Write;

use anyhow::{Context, Result};

/// Prints the completion script for `shell`; returns the exit code.
pub fn completions(shell: clap_complete::Shell, mut cmd: clap::Command) -> Result<i32> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "mesobake", &mut out);
    emit(&out)
}

/// Prints the man page (section 1, roff); returns the exit code.
pub fn man(cmd: clap::Command) -> Result<i32> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .context("rendering the man page")?;
    emit(&out)
}

fn emit(bytes: &[u8]) -> Result<i32> {
    let mut so = std::io::stdout().lock();
    match so.write_all(bytes).and_then(|()| so.flush()) {
        Ok(()) => Ok(0),
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e).context("writing to stdout"),
    }
}
