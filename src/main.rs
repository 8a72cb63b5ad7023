//! The `invalidator` binary: parses the command line, sets up logging, runs one subcommand
//! from the library and turns its result into an exit code.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use invalidator::cli::{Cli, Command, ConsumeArgs, MigrateArgs, RelayArgs};
use invalidator::relay::{self, RelaySettings};
use invalidator::{db, migrate, shutdown, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("invalidator: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("invalidator: error: {}", db::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate(args) => run_migrate(args).await,
        Command::Relay(args) => run_relay(args).await,
        Command::Consume(args) => run_consume(args).await,
    }
}

async fn run_migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let url = args.database.database_url;
    let mut client = db::connect(&url).await?;
    let options = migrate::Options {
        dry_run: args.dry_run,
        lock_timeout: args.lock_timeout,
    };
    let outcome = migrate::run(&mut client, &options)
        .await
        .with_context(|| format!("migrating the database at {url}"))?;
    if args.dry_run {
        if outcome.nothing_to_do() {
            println!(
                "-- nothing to do: the database is at version {}",
                outcome.version
            );
        }
        for m in outcome.adopted.iter().chain(&outcome.applied) {
            let verb = if outcome.adopted.iter().any(|a| a.version == m.version) {
                "re-run and adopt"
            } else {
                "apply"
            };
            println!(
                "-- would {verb} {} (sha256 {})\n{}",
                m.file,
                m.checksum(),
                m.sql
            );
        }
        return Ok(());
    }
    if outcome.nothing_to_do() {
        println!(
            "nothing to do: the database is at version {}",
            outcome.version
        );
    } else {
        for m in &outcome.adopted {
            println!(
                "adopted {} (applied earlier by another tool; re-run and checksum recorded)",
                m.file
            );
        }
        for m in &outcome.applied {
            println!("applied {}", m.file);
        }
        println!("the database is at version {}", outcome.version);
    }
    Ok(())
}

async fn run_relay(args: RelayArgs) -> anyhow::Result<()> {
    let grace = args.shutdown_timeout;
    let settings = RelaySettings::try_from(args)?;
    let token = shutdown::on_signals();
    shutdown::run_with_grace("relay", token.clone(), grace, relay::run(settings, token)).await??;
    Ok(())
}

async fn run_consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let grace = args.shutdown_timeout;
    let settings = invalidator::consumer::ConsumerSettings::try_from(args)
        .context("invalid consumer configuration")?;
    let shutdown = invalidator::shutdown::on_signals();
    let health = invalidator::consumer::Health::new();
    invalidator::shutdown::run_with_grace(
        "the consumer",
        shutdown.clone(),
        grace,
        invalidator::consumer::run(settings, health, shutdown),
    )
    .await??;
    Ok(())
}
