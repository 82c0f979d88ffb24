//! `genesys-worker audit verify`: checks the hash chains of captured audit events
//! ([`crate::audit::verify`]). Exit 1 at the first break, naming the event, 2 if the input cannot
//! be read.

use std::path::Path;
use std::process::ExitCode;

use crate::audit::{self, VerifyError};
use crate::cli::AuditCommand;

pub fn run(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Verify { file, sort } => verify(&file, sort),
    }
}

fn verify(file: &Path, sort: bool) -> ExitCode {
    let input = match super::read_input(file) {
        Ok(input) => input,
        Err(err) => {
            eprintln!("cannot read {}: {err}", file.display());
            return ExitCode::from(2);
        }
    };
    match audit::verify(&input, sort) {
        Ok(report) => {
            println!(
                "ok: {} events, {} entities, {} links verified ({} repeated events skipped)",
                report.events, report.entities, report.links, report.duplicates
            );
            ExitCode::SUCCESS
        }
        Err(err @ VerifyError::Break { .. }) => {
            println!("{err}");
            ExitCode::FAILURE
        }
        Err(err @ VerifyError::Unreadable { .. }) => {
            eprintln!("{err}");
            ExitCode::from(2)
        }
    }
}
