//! `lab-backend --listen ADDR --name NAME`: the lab's HTTP backend, answering every GET with its
//! name (see `netlab::http`). Run inside a backend namespace; SIGKILL it to take the backend down.

use std::{net::TcpListener, process::ExitCode};

use anyhow::{bail, Context, Result};

fn run() -> Result<()> {
    let mut listen = None;
    let mut name = None;
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        match argument.as_str() {
            "--listen" => listen = Some(arguments.next().context("--listen needs an address")?),
            "--name" => name = Some(arguments.next().context("--name needs a name")?),
            "-h" | "--help" => {
                println!("usage: lab-backend --listen ADDRESS:PORT --name NAME");
                return Ok(());
            }
            other => bail!(
                "unknown argument {other:?} (usage: lab-backend --listen ADDRESS:PORT --name NAME)"
            ),
        }
    }
    let listen = listen.context("--listen is required")?;
    let name = name.context("--name is required")?;
    let listener = TcpListener::bind(&listen).with_context(|| format!("binding {listen}"))?;
    eprintln!("lab-backend {name}: listening on {listen}");
    netlab::http::serve(listener, &name).with_context(|| format!("serving on {listen}"))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lab-backend: {error:#}");
            ExitCode::FAILURE
        }
    }
}
