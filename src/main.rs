//! The `emostream` binary: parses the command line and runs one library entry point per subcommand.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use emostream::cli::{self, Command, UpArgs};
use emostream::distributed;
use emostream::log::Log;
use emostream::log::memory::MemoryLog;
use emostream::topology;

fn main() -> ExitCode {
    let cli = match cli::parse_from(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    emostream::telemetry::init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up(args).await,
            Command::Ingest(args) => distributed::ingest(args).await,
            Command::Aggregate(args) => distributed::aggregate(args).await,
            Command::Publish(args) => distributed::publish(args).await,
            Command::Cluster(args) => distributed::cluster(args).await,
            Command::Subscriber(args) => distributed::subscriber(args).await,
            Command::Registry(args) => distributed::registry(args).await,
            Command::Client(args) => emostream::client::run(args).await,
            Command::Load(args) => emostream::load::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    // One socket per viewer: 10 000 viewers need more than the usual 1024 open files.
    if let Err(e) = emostream::sys::raise_nofile_limit() {
        tracing::warn!(error = %e, "cannot raise the open-files limit");
    }
    let config = args.to_config()?;
    let log: Arc<dyn Log> = match &args.kafka.kafka {
        Some(_) => distributed::connect(&args.kafka).await.context("cannot start the pipeline")?,
        None => Arc::new(MemoryLog::new()),
    };
    let mode = if args.kafka.kafka.is_some() { format!("one process, {}", log.describe()) } else { "embedded, in-process log".to_string() };
    let running = topology::up(config.clone(), log).await.context("cannot start the pipeline")?;
    let (ingest, api) = (running.ingest_addr, running.api_addr);
    emostream::say!("EmoStream is up ({mode})");
    emostream::say!("  ingest     http://{ingest}   POST /emoji, POST /emojis");
    emostream::say!("  api        http://{api}   POST /subscribe, GET /stream/{{id}}, GET /ws/{{id}}, GET /windows, GET /metrics");
    emostream::say!("  dashboard  http://{api}/");
    emostream::say!(
        "  {} clusters x {} subscribers, {} ms windows, scale {}",
        config.clusters,
        config.subscribers,
        config.window.as_millis(),
        config.scale
    );
    emostream::say!("try it:");
    emostream::say!("  curl -X POST http://{api}/subscribe -H 'Content-Type: application/json' -d '{{\"client_id\":\"me\"}}'");
    emostream::say!("  curl -N http://{api}/stream/me &");
    emostream::say!(
        "  curl -X POST http://{ingest}/emoji -H 'Content-Type: application/json' -d '{{\"emoji\":\"😂\",\"client_id\":\"me\"}}'"
    );
    emostream::say!("Ctrl-C stops: pending windows are published before streams close.");
    running.run_until(topology::shutdown_signal()).await.context("the pipeline stopped with an error")?;
    emostream::say!("EmoStream stopped cleanly");
    Ok(())
}
