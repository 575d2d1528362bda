//! Senders: a pool of HTTP/1.1 keep-alive connections, each writing pipelined requests prepared in
//! advance and parsing the answers in order, so the generator spends its time in `write`/`read`,
//! not in building requests. Arrivals are Poisson (exponential gaps) at the senders' total rate.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::Exp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::config::{Bursts, Mix};
use super::viewers::now_us;

/// What every connection sends.
#[derive(Debug, Clone)]
pub struct SendPlan {
    /// `host:port` of ingest.
    pub authority: String,
    pub batch: u32,
    /// Requests per second over the whole pool (0: as fast as answered).
    pub request_rate: f64,
    pub bursts: Bursts,
    pub duration: Duration,
    pub connections: u32,
    pub depth: u32,
    pub mix: Mix,
    /// Client ids events are sent as.
    pub sender_ids: Arc<Vec<String>>,
    /// Window size for the send → window latency (0: not measured).
    pub window_ms: i64,
    pub seed: u64,
}

/// Live counters, read by the progress line.
#[derive(Debug, Default)]
pub struct Live {
    pub requests_ok: AtomicU64,
    pub emojis_ok: AtomicU64,
    pub errors: AtomicU64,
}

/// What one connection did.
#[derive(Debug, Default)]
pub struct SendResult {
    pub requests_ok: u64,
    /// Emojis acked, by index into the mix.
    pub acked: Vec<u64>,
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer (the connection broke): their outcome is unknown.
    pub unanswered: u64,
    pub io_errors: BTreeMap<String, u64>,
    /// Batches with some events refused (never expected: the generator sends valid events).
    pub partial_batches: u64,
    pub first_send_us: i64,
    pub last_ack_us: i64,
    /// window start → emojis acked by send-time offset into the window (ms).
    pub offsets: HashMap<i64, Vec<u32>>,
}

impl SendResult {
    pub fn merge(&mut self, o: SendResult) {
        self.requests_ok += o.requests_ok;
        if self.acked.len() < o.acked.len() {
            self.acked.resize(o.acked.len(), 0);
        }
        for (a, b) in self.acked.iter_mut().zip(o.acked) {
            *a += b;
        }
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in o.io_errors {
            *self.io_errors.entry(k).or_default() += v;
        }
        self.unanswered += o.unanswered;
        self.partial_batches += o.partial_batches;
        self.first_send_us = match (self.first_send_us, o.first_send_us) {
            (0, x) | (x, 0) => x,
            (a, b) => a.min(b),
        };
        self.last_ack_us = self.last_ack_us.max(o.last_ack_us);
        for (w, v) in o.offsets {
            let mine = self.offsets.entry(w).or_insert_with(|| vec![0; v.len()]);
            for (a, b) in mine.iter_mut().zip(v) {
                *a += b;
            }
        }
    }
}

/// A request ready to write, and what it carries.
struct Prepared {
    bytes: Bytes,
    /// (mix index, count)
    per_emoji: Vec<(usize, u32)>,
    emojis: u32,
}

/// Requests prepared per connection; picked at random, so the mix holds over a run.
const POOL: usize = 256;

fn prepare(plan: &SendPlan, rng: &mut SmallRng) -> Vec<Prepared> {
    let weights = WeightedIndex::new(plan.mix.0.iter().map(|(_, w)| *w)).expect("mix validated");
    let path = if plan.batch > 1 { "/emojis" } else { "/emoji" };
    // Big batches: fewer distinct bodies keep memory small; they are still random.
    let pool = if plan.batch > 100 { 16 } else { POOL };
    (0..pool)
        .map(|_| {
            let mut per = vec![0u32; plan.mix.0.len()];
            let mut body = String::with_capacity(plan.batch as usize * 48);
            if plan.batch > 1 {
                body.push('[');
            }
            for i in 0..plan.batch {
                let e = weights.sample(rng);
                per[e] += 1;
                let id = &plan.sender_ids[rng.random_range(0..plan.sender_ids.len())];
                if i > 0 {
                    body.push(',');
                }
                body.push_str(r#"{"emoji":""#);
                body.push_str(&plan.mix.0[e].0);
                body.push_str(r#"","client_id":""#);
                body.push_str(id);
                body.push_str(r#""}"#);
            }
            if plan.batch > 1 {
                body.push(']');
            }
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                plan.authority,
                body.len()
            );
            let mut bytes = BytesMut::with_capacity(head.len() + body.len());
            bytes.extend_from_slice(head.as_bytes());
            bytes.extend_from_slice(body.as_bytes());
            Prepared {
                bytes: bytes.freeze(),
                per_emoji: per.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, n)| (i, *n)).collect(),
                emojis: plan.batch,
            }
        })
        .collect()
}

/// One parsed answer.
struct Answer {
    status: u16,
    accepted: Option<u64>,
}

/// Parses one complete response at the front of `buf`, returning it and its length.
fn parse_answer(buf: &[u8]) -> Result<Option<(Answer, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 24];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad HTTP answer: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let mut len = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            len = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked answers are not supported by the load generator".into());
        }
    }
    let len = len.ok_or("answer without Content-Length")?;
    if buf.len() < head_len + len {
        return Ok(None);
    }
    let body = &buf[head_len..head_len + len];
    let accepted = find_number(body, b"\"accepted\":");
    Ok(Some((Answer { status, accepted }, head_len + len)))
}

fn find_number(body: &[u8], key: &[u8]) -> Option<u64> {
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = body[at..].iter().skip_while(|b| **b == b' ').take_while(|b| b.is_ascii_digit()).copied().collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Runs one connection's share of the plan; reconnects when the connection breaks.
pub async fn run_connection(plan: Arc<SendPlan>, index: u32, start: Instant, live: Arc<Live>) -> SendResult {
    let mut rng = SmallRng::seed_from_u64(plan.seed.wrapping_add(u64::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let pool = prepare(&plan, &mut rng);
    let mut res = SendResult { acked: vec![0; plan.mix.0.len()], ..SendResult::default() };
    let rate = plan.request_rate / f64::from(plan.connections);
    let gap = if rate > 0.0 { Some(Exp::new(1.0).expect("rate 1")) } else { None };
    // Next arrival, seconds since start (rate mode).
    let mut next = 0.0f64;
    let advance = |next: &mut f64, rng: &mut SmallRng| {
        if let Some(g) = &gap {
            // A burst changes the rate from the current arrival on.
            let factor = plan.bursts.factor_at(Duration::from_secs_f64(*next)).max(1e-9);
            *next += g.sample(rng) / (rate * factor);
        }
    };
    advance(&mut next, &mut rng);
    let end = plan.duration.as_secs_f64();
    let mut inflight: VecDeque<(usize, i64)> = VecDeque::new();
    let mut stream: Option<TcpStream> = None;
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    loop {
        let elapsed = start.elapsed().as_secs_f64();
        let sending = elapsed < end;
        if !sending && inflight.is_empty() {
            break;
        }
        if stream.is_none() {
            match TcpStream::connect(&plan.authority).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                }
                Err(e) => {
                    *res.io_errors.entry(format!("connect: {}", e.kind())).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let s = stream.as_mut().expect("connected");
        // Write what is due, up to the pipeline depth.
        let room = (plan.depth as usize).saturating_sub(inflight.len());
        let mut due = 0;
        if sending {
            if gap.is_some() {
                while due < room && next <= elapsed && next < end {
                    due += 1;
                    advance(&mut next, &mut rng);
                }
            } else {
                due = room;
            }
        }
        if due > 0 {
            let sent_us = now_us();
            if res.first_send_us == 0 {
                res.first_send_us = sent_us;
            }
            for _ in 0..due {
                let i = rng.random_range(0..pool.len());
                wbuf.extend_from_slice(&pool[i].bytes);
                inflight.push_back((i, sent_us));
            }
            if let Err(e) = s.write_all(&wbuf).await {
                wbuf.clear();
                lost(&mut res, &mut inflight, &live, format!("write: {}", e.kind()));
                stream = None;
                continue;
            }
            wbuf.clear();
        }
        if inflight.is_empty() {
            // Rate mode, nothing in flight: sleep until the next arrival.
            if sending && next < end {
                let wake = start + Duration::from_secs_f64(next);
                tokio::time::sleep_until(wake).await;
            } else if sending {
                tokio::time::sleep_until(start + plan.duration).await;
            }
            continue;
        }
        let can_send_more = gap.is_some() && sending && inflight.len() < plan.depth as usize && next < end;
        let wake = start + Duration::from_secs_f64(next.min(end));
        let read = tokio::select! {
            r = s.read_buf(&mut rbuf) => Some(r),
            () = tokio::time::sleep_until(wake), if can_send_more => None,
        };
        match read {
            None => continue,
            Some(Ok(0)) => {
                lost(&mut res, &mut inflight, &live, "the server closed the connection".into());
                stream = None;
                rbuf.clear();
                continue;
            }
            Some(Err(e)) => {
                lost(&mut res, &mut inflight, &live, format!("read: {}", e.kind()));
                stream = None;
                rbuf.clear();
                continue;
            }
            Some(Ok(_)) => {}
        }
        let (mut ok_req, mut ok_emojis, mut errors) = (0u64, 0u64, 0u64);
        let ack_us = now_us();
        loop {
            match parse_answer(&rbuf) {
                Ok(Some((answer, used))) => {
                    let _ = rbuf.split_to(used);
                    let Some((i, sent_us)) = inflight.pop_front() else { break };
                    let p = &pool[i];
                    *res.statuses.entry(answer.status).or_default() += 1;
                    if answer.status != 200 {
                        errors += 1;
                        continue;
                    }
                    let accepted = if plan.batch > 1 { answer.accepted.unwrap_or(0) } else { 1 };
                    if accepted == u64::from(p.emojis) {
                        for &(e, n) in &p.per_emoji {
                            res.acked[e] += u64::from(n);
                        }
                    } else {
                        res.partial_batches += 1;
                    }
                    ok_req += 1;
                    ok_emojis += accepted;
                    res.last_ack_us = ack_us;
                    if plan.window_ms > 0 {
                        let sent_ms = sent_us / 1000;
                        let w = sent_ms.div_euclid(plan.window_ms) * plan.window_ms;
                        let slot = res.offsets.entry(w).or_insert_with(|| vec![0; plan.window_ms as usize]);
                        slot[(sent_ms - w) as usize] += u32::try_from(accepted).unwrap_or(u32::MAX);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    lost(&mut res, &mut inflight, &live, e);
                    stream = None;
                    rbuf.clear();
                    break;
                }
            }
        }
        res.requests_ok += ok_req;
        live.requests_ok.fetch_add(ok_req, Ordering::Relaxed);
        live.emojis_ok.fetch_add(ok_emojis, Ordering::Relaxed);
        live.errors.fetch_add(errors, Ordering::Relaxed);
    }
    res
}

fn lost(res: &mut SendResult, inflight: &mut VecDeque<(usize, i64)>, live: &Live, why: String) {
    res.unanswered += inflight.len() as u64;
    live.errors.fetch_add(inflight.len() as u64, Ordering::Relaxed);
    inflight.clear();
    *res.io_errors.entry(why).or_default() += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_in_order_with_partial_input() {
        let one = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 28\r\n\r\n{\"message\":\"Emoji received\"}";
        let (a, n) = parse_answer(one).unwrap().unwrap();
        assert_eq!((a.status, n), (200, one.len()));
        assert!(parse_answer(&one[..one.len() - 1]).unwrap().is_none());
        assert_eq!(find_number(br#"{"accepted":1000,"rejected":0}"#, b"\"accepted\":"), Some(1000));
    }

    #[test]
    fn prepared_requests_carry_their_counts() {
        let plan = SendPlan {
            authority: "h:1".into(),
            batch: 10,
            request_rate: 0.0,
            bursts: Bursts::default(),
            duration: Duration::from_secs(1),
            connections: 1,
            depth: 1,
            mix: super::super::config::parse_mix("😀=1,😂=1").unwrap(),
            sender_ids: Arc::new(vec!["s1".into()]),
            window_ms: 0,
            seed: 1,
        };
        let pool = prepare(&plan, &mut SmallRng::seed_from_u64(1));
        for p in &pool {
            assert_eq!(p.per_emoji.iter().map(|(_, n)| n).sum::<u32>(), 10);
            let text = std::str::from_utf8(&p.bytes).unwrap();
            let body = text.split("\r\n\r\n").nth(1).unwrap();
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v.as_array().unwrap().len(), 10);
            assert!(text.starts_with("POST /emojis HTTP/1.1\r\n"));
        }
    }
}
