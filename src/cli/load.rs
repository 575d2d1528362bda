//! The flags of `emostream load`.

use std::time::Duration;

use super::parse::parse_duration;
use crate::load::{Bursts, LoadConfig, LoadTransport, Mix, parse_bursts, parse_mix};

/// Flags of `emostream load`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Bursts: --burst x10@5s+2s multiplies every sender's rate by 10 from 5 s into the run for 2 s;
give several comma-separated (x10@5s+2s,x3@20s+5s).

Counting rule: senders start at the first window boundary after every viewer is connected
(window W0). Every emoji acked with 200 is then stamped at or after W0, so when this is the only
sender, the sum of `counts` over windows W0..Wend equals the emojis acked, per emoji. Wend is the
window after the one holding the last ack, plus one (room for late events). Windows before W0 are
reported as the baseline and not compared.

Examples:
  emostream load --clients 1000 --senders 100 --rate 10 --duration 20s
  emostream load --clients 0 --senders 1 --rate 0 --batch 1000 --duration 10s   # max batch ingest
")]
pub struct LoadArgs {
    /// Ingest API base URL (POST /emoji, POST /emojis).
    #[arg(long, env = "EMOSTREAM_INGEST", default_value = "http://127.0.0.1:5001")]
    pub ingest: String,

    /// Subscription and delivery API base URL.
    #[arg(long, env = "EMOSTREAM_API", default_value = "http://127.0.0.1:5002")]
    pub api: String,

    /// Viewers: each subscribes and holds a stream for the whole run (0: only send).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,

    /// Viewers that also send emojis (the first N); with --clients 0, independent senders.
    #[arg(long, default_value_t = 10)]
    pub senders: usize,

    /// How viewers receive windows.
    #[arg(long, value_enum, default_value_t = LoadTransport::Sse)]
    pub transport: LoadTransport,

    /// Put every viewer on this cluster (spread over its subscribers); default: least loaded anywhere.
    #[arg(long)]
    pub cluster: Option<u32>,

    /// Emojis per second per sender, Poisson arrivals; 0 sends as fast as the server answers.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,

    /// Emoji mix with weights, e.g. "😀=5,😂=3,👍=1" (weight 1 when omitted).
    #[arg(long, default_value = "😀,😂,😍,👍", value_parser = parse_mix)]
    pub mix: Mix,

    /// Rate bursts: xM@START+LEN, comma-separated (e.g. x10@5s+2s).
    #[arg(long, value_parser = parse_bursts)]
    pub burst: Option<Bursts>,

    /// Emojis per request: 1 uses POST /emoji, more uses POST /emojis with a JSON array.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,

    /// How long senders send (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// HTTP/1.1 keep-alive connections the senders share.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub connections: u32,

    /// Requests in flight per connection (pipelined).
    #[arg(long, alias = "pipeline", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,

    /// Streams opened at once while viewers connect.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,

    /// Skip the count check (other senders are active, so counts cannot match).
    #[arg(long)]
    pub no_count_check: bool,

    /// PID of the server: its RSS and CPU time are sampled and reported (Linux /proc).
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Seconds to hold the viewers after they connected before sending starts (memory sampling).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub hold: Duration,

    /// Random seed (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Print one JSON object with the results on stdout instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Write the per-second timeline and the latency histogram into the JSON (for plots).
    #[arg(long)]
    pub detail: bool,

    /// Give up on viewers and windows after this long past the expected time.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl LoadArgs {
    pub fn to_config(self) -> LoadConfig {
        LoadConfig {
            ingest: self.ingest,
            api: self.api,
            clients: self.clients,
            senders: self.senders,
            transport: self.transport,
            cluster: self.cluster,
            rate: self.rate,
            mix: self.mix,
            burst: self.burst,
            batch: self.batch,
            duration: self.duration,
            connections: self.connections,
            concurrency: self.concurrency,
            connect_concurrency: self.connect_concurrency,
            no_count_check: self.no_count_check,
            server_pid: self.server_pid,
            hold: self.hold,
            seed: self.seed,
            json: self.json,
            detail: self.detail,
            timeout: self.timeout,
        }
    }
}
