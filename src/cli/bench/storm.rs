//! `freeim bench resume`: the resume storm. Durable sockets on one node, all in one room; the
//! node is killed (SIGKILL, as in a crash) and, while it is down, the room gets a gap of
//! durable channel messages; the node is started again and every socket reconnects at
//! once with `resume=` its position. Measured: the time from the first reconnect until
//! every socket is current (it got its replay and the position frame that ends it), and what
//! Redis spent meanwhile. Each socket must recover, get exactly the gap, and nothing twice.
//!
//! It starts its own Redis and node (this binary), because it must kill and restart the
//! node; a restarted node has an empty memory, so its window comes from one read of its
//! log in Redis, and each resume reads only the client's channels.

use super::cluster::{Nodes, Redis};
use super::durable::ResumeCounts;
use super::pool::Pool;
use super::publish::Audience;
use super::report::{self, Record};
use super::scenarios::{self, BENCH_CHAN, DEFAULT_INFLIGHT, Target};
use super::stats::{cpu_secs, now_ns};
use super::worker::{FromWorker, ToWorker};
use std::path::PathBuf;
use std::time::Duration;

/// The scenario's name in reports.
const NAME: &str = "resume-storm";

/// Flags of `freeim bench resume`.
#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// Durable sockets, all on one node (one process holds at most ~19,900 here).
    #[arg(long, default_value_t = 19_000)]
    connections: u64,
    /// Durable channel messages sent to the room while the node is down: each socket's gap.
    #[arg(long, default_value_t = 100)]
    gap: u64,
    /// Repetitions, each on a fresh Redis and node.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// Append each record to this JSON-lines file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Runs the storm `runs` times; fails unless every socket recovered exactly its gap.
pub async fn run(args: ResumeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.connections > 0 && args.gap > 0, "--connections and --gap must be at least 1");
    for run in 1..=args.runs.max(1) {
        let (mut record, counts) = storm(&args).await?;
        record.run = run;
        report::print_table(std::slice::from_ref(&record));
        if let Some(path) = &args.json {
            report::append_json(path, std::slice::from_ref(&record))?;
        }
        let expected = args.connections * args.gap;
        anyhow::ensure!(
            counts.recovered == args.connections
                && counts.replayed == expected
                && counts.duplicates == 0
                && counts.malformed == 0,
            "of {} sockets {} recovered; {} of {expected} messages replayed, {} duplicated, {} malformed frames",
            args.connections,
            counts.recovered,
            counts.replayed,
            counts.duplicates,
            counts.malformed
        );
    }
    Ok(())
}

/// One storm on a fresh Redis and node: its record and the workers' resume counters.
async fn storm(args: &ResumeArgs) -> anyhow::Result<(Record, ResumeCounts)> {
    let n = args.connections;
    let redis = Redis::start()?;
    let mut nodes = Nodes::start(1, &redis.url)?;
    let mut target = Target::ours(&nodes, &redis);
    target.label = "freeim-durable".to_owned();
    (target.durable, target.spec.resume, target.min_workers) = (true, true, 2);
    let opened = scenarios::open(&target, NAME, n, 0.0, DEFAULT_INFLIGHT).await?;
    let mut pool = opened.pool;
    scenarios::join_all(&target.im()?, n).await?;
    let at_top = scenarios::wait_count(&mut pool, NAME, "durable sockets open", n, |p| p.current).await?;
    anyhow::ensure!(at_top.current == n, "only {} of {n} durable sockets got their hello", at_top.current);

    // The crash: every socket sees its connection end.
    nodes.procs[0].kill();
    let closed = scenarios::wait_count(&mut pool, NAME, "sockets closed", n, |p| p.closed).await?;
    anyhow::ensure!(closed.closed >= n, "only {} of {n} sockets saw the node die", closed.closed);
    // The gap, logged while no node serves the room.
    let mut publisher = target.publisher().await?;
    let room = Audience::Chan(Some(BENCH_CHAN.to_owned()));
    let (_, send_errors) =
        scenarios::publish(&mut publisher, target.message_len, args.gap, 0.0, 1, |_| room.clone()).await;
    pool.send_all(&ToWorker::Reset)?;
    // New tokens, as the clients would fetch from the business (its Redis work is not the
    // storm's), each dial with its client's position.
    scenarios::prepare(&mut pool, &target, n).await?;

    // Redis's CPU from here covers the restart too: the node's cleanup of its crashed run's
    // records and the opening of its log.
    let redis_before = cpu_secs(redis.proc.pid()).unwrap_or(0.0);
    let restarted_ns = now_ns();
    nodes.restart(0)?;
    target.watch = nodes.pids();
    let cpu = target.cpu_probe(&pool);
    let reopened = scenarios::connect_prepared(pool, &target, NAME, n, 0.0, DEFAULT_INFLIGHT).await?;
    let mut record = Record::new(NAME, &target.label);
    reopened.connects(&mut record);
    let first_ns = reopened.first_ns;
    let mut pool = reopened.pool;
    scenarios::wait_count(&mut pool, NAME, "current", n, |p| p.current).await?;
    let cpu = cpu.stop();
    let redis_cpu = cpu_secs(redis.proc.pid()).unwrap_or(0.0) - redis_before;
    let counts = resume_counts(&mut pool).await?;
    let secs = counts.last_current_ns.saturating_sub(first_ns) as f64 / 1e9;
    record.nodes = 1;
    record.size = n;
    record.messages = Some(args.gap);
    record.ok = Some(counts.recovered);
    record.failed = Some(record.failed.unwrap_or(0) + counts.not_recovered);
    record.delivered = Some(counts.replayed);
    record.expected = Some(n * args.gap);
    record.missing = Some((n * args.gap).saturating_sub(counts.replayed));
    record.send_errors = Some(send_errors);
    record.deliveries_per_s = Some(counts.replayed as f64 / secs.max(1e-9));
    record.all_current_s = Some(secs);
    record.cpu = cpu;
    record.elapsed_s = secs;
    eprintln!(
        "  [{NAME}] node restart to all current: {:.2} s; Redis CPU {:.0} ms ({:.1} µs per resume); \
         {} upgrades retried after 503; {} duplicates",
        counts.last_current_ns.saturating_sub(restarted_ns) as f64 / 1e9,
        redis_cpu * 1e3,
        redis_cpu * 1e6 / n as f64,
        counts.retries,
        counts.duplicates
    );
    drop((pool, nodes, redis));
    Ok((record, counts))
}

/// The resume counters summed over the workers.
async fn resume_counts(pool: &mut Pool) -> anyhow::Result<ResumeCounts> {
    pool.send_all(&ToWorker::ResumeReport)?;
    let answers = pool.expect("resumes", Duration::from_secs(30), |m| matches!(m, FromWorker::Resumes { .. })).await?;
    let mut sum = ResumeCounts::default();
    for answer in answers {
        if let FromWorker::Resumes { counts } = answer {
            sum.merge(&counts);
        }
    }
    Ok(sum)
}
