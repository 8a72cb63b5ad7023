//! The `invalidator` binary: parses the command line, sets up logging, runs one subcommand
//! from the library and turns its result into an exit code.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use invalidator::cli::{CheckCommand, Cli, Command, DlqCommand, MigrateArgs, RunArgs};
use invalidator::consumer::{self, ConsumerSettings};
use invalidator::kafka::{KafkaSettings, KafkaSetupError, TopicSpec};
use invalidator::metrics::{self, Endpoint};
use invalidator::redact::Redacted;
use invalidator::relay::{self, RelaySettings};
use invalidator::{check, db, dlq, migrate, pipeline, shutdown, status, telemetry};

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
        Ok(code) => code,
        Err(e) => {
            eprintln!("invalidator: error: {}", db::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Migrate(args) => run_migrate(args).await,
        Command::Relay(args) => {
            let grace = args.daemon.shutdown_timeout;
            let addr = args.daemon.metrics_addr;
            let settings = RelaySettings::try_from(args).context("invalid relay configuration")?;
            let token = shutdown::on_signals();
            let health = relay::Health::new();
            let mut endpoint = Endpoint::new();
            endpoint.add("relay", metrics::RELAY_READY, &health);
            let server = serve(addr, endpoint, &token).await?;
            shutdown::run_with_grace("the relay", token.clone(), grace, async {
                relay::run(settings, health, token.clone()).await
            })
            .await??;
            stop(server);
            Ok(ExitCode::SUCCESS)
        }
        Command::Consume(args) => {
            let grace = args.daemon.shutdown_timeout;
            let addr = args.daemon.metrics_addr;
            let settings =
                ConsumerSettings::try_from(args).context("invalid consumer configuration")?;
            let token = shutdown::on_signals();
            let health = consumer::Health::new();
            let mut endpoint = Endpoint::new();
            endpoint.add("consumer", metrics::CONSUMER_READY, &health);
            let server = serve(addr, endpoint, &token).await?;
            shutdown::run_with_grace("the consumer", token.clone(), grace, async {
                consumer::run(settings, health, token.clone()).await
            })
            .await??;
            stop(server);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run_pipeline(args).await,
        Command::Dlq(DlqCommand::List(args)) => {
            dlq::list(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq(DlqCommand::Replay(args)) => {
            let token = shutdown::on_signals();
            dlq::replay(args, token).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => {
            let breached = status::run(args).await?;
            // 2, like Nagios' CRITICAL: a threshold is exceeded (1 means the check failed).
            Ok(if breached {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Check(role) => {
            let ok = match role {
                CheckCommand::Relay(a) => check::relay(a).await,
                CheckCommand::Consume(a) => check::consume(a).await,
                CheckCommand::Run(a) => check::run(a).await,
            };
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` when an address is given.
async fn serve(
    addr: Option<SocketAddr>,
    endpoint: Endpoint,
    token: &CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = addr else { return Ok(None) };
    let handle = metrics::serve(addr, endpoint, token.clone())
        .await
        .with_context(|| format!("serving metrics on --metrics-addr {addr} failed"))?;
    Ok(Some(handle))
}

fn stop(server: Option<tokio::task::JoinHandle<()>>) {
    if let Some(s) = server {
        s.abort();
    }
}

async fn run_pipeline(args: RunArgs) -> anyhow::Result<ExitCode> {
    let grace = args.daemon.shutdown_timeout;
    if args.migrate {
        apply_migrations(&args.database.database_url, &migrate::Options::default()).await?;
    }
    let topic = args.topic.topic.clone();
    let topics = [topic.clone(), consumer::settings::dlq_topic(&topic)];
    let (embedded, kafka) = match KafkaSettings::from_args(&args.kafka) {
        Ok(kafka) => (None, kafka),
        Err(KafkaSetupError::NoBrokers) => {
            let spec = TopicSpec {
                partitions: args.create.partitions,
                replication_factor: 1,
            };
            let embedded = pipeline::Embedded::start(&topics, spec)?;
            let kafka = embedded.kafka_settings(&args.kafka.options);
            tracing::warn!(
                brokers = kafka.brokers,
                "no KAFKA_BROKERS: running on an EMBEDDED in-process Kafka (librdkafka's mock \
                 cluster). It is NOT durable: invalidations published but not yet applied are \
                 lost when this process stops, and it holds at most 5 MiB per partition. Fine \
                 for trying invalidator out; set KAFKA_BROKERS for anything else"
            );
            (Some(embedded), kafka)
        }
        Err(e) => return Err(e).context("invalid Kafka configuration"),
    };
    let relay_settings = RelaySettings::build(args.relay_args(), kafka.clone())
        .context("invalid relay configuration")?;
    let consumer_settings = ConsumerSettings::build(args.consume_args(), kafka)
        .context("invalid consumer configuration")?;

    let token = shutdown::on_signals();
    let relay_health = relay::Health::new();
    let consumer_health = consumer::Health::new();
    let mut endpoint = Endpoint::new();
    endpoint.add("relay", metrics::RELAY_READY, &relay_health);
    endpoint.add("consumer", metrics::CONSUMER_READY, &consumer_health);
    let server = serve(args.daemon.metrics_addr, endpoint, &token).await?;
    shutdown::run_with_grace(
        "the relay and the consumer",
        token.clone(),
        grace,
        pipeline::run(
            relay_settings,
            relay_health,
            consumer_settings,
            consumer_health,
            token.clone(),
        ),
    )
    .await??;
    stop(server);
    drop(embedded);
    Ok(ExitCode::SUCCESS)
}

async fn run_migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let options = migrate::Options {
        dry_run: args.dry_run,
        lock_timeout: args.lock_timeout,
    };
    apply_migrations(&args.database.database_url, &options).await?;
    Ok(ExitCode::SUCCESS)
}

/// Applies (or, dry-run, prints) the migrations and says what it did on stdout.
async fn apply_migrations(url: &Redacted, options: &migrate::Options) -> anyhow::Result<()> {
    let mut client = db::connect(url).await?;
    let outcome = migrate::run(&mut client, options)
        .await
        .with_context(|| format!("migrating the database at {url}"))?;
    if options.dry_run {
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
