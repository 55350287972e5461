//! The load generator's smoke runs: `freeim bench all --smoke` starts its own Redis, gateway
//! nodes, raw baseline and workers, runs every scenario at tiny sizes, and must finish with
//! no connection failed and no message missing (it exits non-zero otherwise); `freeim bench
//! resume` at a small size must recover every socket with exactly its gap.

mod common;
use common::*;
use std::time::Duration;

/// How long the smoke suite may take.
const SMOKE_WITHIN: Duration = Duration::from_secs(60);
/// `bench scale` also waits for a killed node's lease to expire (up to 20 s) before a
/// survivor cleans up.
const LIFE_WITHIN: Duration = Duration::from_secs(150);

#[test]
fn bench_smoke_suite_completes_with_nothing_missing() {
    let json = std::env::temp_dir().join(format!("freeim-bench-smoke-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let args = ["bench", "all", "--smoke", "--json", json.to_str().unwrap()];
    let Finished { code, stdout, stderr } = run(&args, &[("RUST_LOG", "warn")], SMOKE_WITHIN);
    assert_eq!(code, Some(0), "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}");

    let lines = std::fs::read_to_string(&json).expect("JSON lines written");
    let records: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let _ = std::fs::remove_file(&json);
    for scenario in ["connect", "fanout-burst", "broadcast-burst", "fanout-paced", "p2p-max", "p2p-paced"] {
        for target in ["freeim", "raw"] {
            if scenario == "broadcast-burst" && target == "raw" {
                continue;
            }
            let found = records.iter().any(|r| r["scenario"] == scenario && r["target"] == target);
            assert!(found, "no {scenario} record for {target}: {lines}");
        }
    }
    for record in &records {
        assert_eq!(record["missing"].as_u64().unwrap_or(0), 0, "{record}");
        assert_eq!(record["failed"].as_u64().unwrap_or(0), 0, "{record}");
        let done = record["delivered"].as_u64().or(record["ok"].as_u64()).unwrap_or(0);
        assert!(done > 0, "nothing measured: {record}");
    }
    assert!(stdout.contains("Ours against the raw baseline"), "{stdout}");
}

#[test]
fn bench_resume_storm_recovers_every_socket_with_its_gap() {
    let json = std::env::temp_dir().join(format!("freeim-bench-resume-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let args = ["bench", "resume", "--connections", "300", "--gap", "10", "--json", json.to_str().unwrap()];
    let Finished { code, stdout, stderr } = run(&args, &[("RUST_LOG", "warn")], SMOKE_WITHIN);
    assert_eq!(code, Some(0), "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let line = std::fs::read_to_string(&json).expect("JSON line written");
    let _ = std::fs::remove_file(&json);
    let record: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(record["scenario"], "resume-storm", "{record}");
    let counts = ["size", "ok", "failed", "delivered", "missing"].map(|k| record[k].as_u64());
    assert_eq!(counts, [Some(300), Some(300), Some(0), Some(3_000), Some(0)], "{record}");
    assert!(record["all_current_s"].as_f64().is_some_and(|s| s > 0.0), "{record}");
}

/// A `freeim server` node on `redis` with the API key `k1`, once healthy; and its address.
async fn node_with_api(redis: &RedisServer) -> (FreeimProcess, String) {
    let addr = free_addr();
    let args = ["server", "--redis", &redis.url(), "--server", &addr, "--servers", &addr];
    (FreeimProcess::start(&args, &[("RUST_LOG", "warn"), ("FREEIM_API_KEY", "k1")], &addr, 200).await, addr)
}

/// Runs `freeim bench p2p` against the node at `addr` with 50 clients and 500 messages, plus
/// `flags`; its JSON record.
fn p2p_record(redis: &RedisServer, addr: &str, flags: &[&str]) -> serde_json::Value {
    // One file per node: the tests run side by side in one process.
    let port = addr.rsplit(':').next().unwrap();
    let json = std::env::temp_dir().join(format!("freeim-bench-p2p-{}-{port}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let (url, json_path) = (redis.url(), json.to_str().unwrap().to_owned());
    let mut args = vec!["bench", "p2p", "--redis", &url, "--servers", addr, "--clients", "50", "--messages", "500"];
    args.extend(["--json", &json_path]);
    args.extend(flags);
    let Finished { code, stdout, stderr } = run(&args, &[("RUST_LOG", "warn")], SMOKE_WITHIN);
    assert_eq!(code, Some(0), "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let record = serde_json::from_str(std::fs::read_to_string(&json).unwrap().trim()).unwrap();
    let _ = std::fs::remove_file(&json);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_p2p_publishes_through_the_http_api() {
    let redis = RedisServer::start();
    let (node, addr) = node_with_api(&redis).await;
    let record = p2p_record(&redis, &addr, &["--api-key", "k1"]);
    let counts = ["delivered", "missing", "send_errors"].map(|k| record[k].as_u64());
    assert_eq!((&record["target"], counts), (&serde_json::json!("freeim-api"), [Some(500), Some(0), Some(0)]));
    let api_calls = metric(&metrics(&addr).await, "freeim_api_calls_total{method=\"send\",status=\"200\"}");
    assert!(api_calls >= 500, "the sends went through the API: {api_calls}");
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_p2p_counts_receipts() {
    let redis = RedisServer::start();
    let (node, addr) = node_with_api(&redis).await;
    let record = p2p_record(&redis, &addr, &["--receipts"]);
    let counts = ["delivered", "receipts", "missing"].map(|k| record[k].as_u64());
    assert_eq!(counts, [Some(500), Some(500), Some(0)], "{record}");
    assert!(record["receipts_per_s"].as_f64().is_some_and(|r| r > 0.0), "{record}");
    drop(node);
}

#[test]
fn bench_scale_reports_each_node_the_memory_and_a_whole_life_of_the_cluster() {
    let json = std::env::temp_dir().join(format!("freeim-bench-scale-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let args = [
        "bench",
        "scale",
        "--nodes",
        "2",
        "--connections",
        "300",
        "--hold",
        "1",
        "--sample-every",
        "1",
        "--room",
        "100",
        "--json",
        json.to_str().unwrap(),
    ];
    let Finished { code, stdout, stderr } = run(&args, &[("RUST_LOG", "warn")], LIFE_WITHIN);
    assert_eq!(code, Some(0), "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(&json).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let _ = std::fs::remove_file(&json);
    let scenarios: Vec<&str> = records.iter().map(|r| r["scenario"].as_str().unwrap()).collect();
    assert_eq!(scenarios, ["scale", "scale-broadcast", "scale-room", "scale-life"]);
    let record = &records[0];
    assert_eq!((record["ok"].as_u64(), record["failed"].as_u64()), (Some(300), Some(0)));
    let per_node: Vec<u64> =
        record["per_node"].as_array().unwrap().iter().map(|n| n["connections"].as_u64().unwrap()).collect();
    assert_eq!(per_node, [150, 150], "{record}");
    for part in ["workers", "kernel_slab", "mem_available", "redis"] {
        assert!(record["memory_per_conn"][part].as_f64().is_some(), "{part}: {record}");
    }
    assert!(record["memory_per_conn"]["redis"].as_f64().unwrap() > 0.0, "presence costs Redis memory: {record}");
    // Three broadcasts to all 300, three messages to the room of 100 (clients 1..=100).
    let delivered = |r: &serde_json::Value| (r["delivered"].as_u64(), r["missing"].as_u64());
    assert_eq!(delivered(&records[1]), (Some(900), Some(0)), "{}", records[1]);
    assert_eq!(delivered(&records[2]), (Some(300), Some(0)), "{}", records[2]);
    let life = &records[3];
    let last = life["hold"].as_array().unwrap().last().unwrap();
    assert_eq!((last["open"].as_u64(), last["closed"].as_u64()), (Some(300), Some(0)), "{life}");
    assert_eq!((life["online"].as_u64(), life["socket_records"].as_u64()), (Some(300), Some(300)), "{life}");
    // The second node is killed; a survivor cleans its 150 sockets once, one offline event each.
    let crash = &life["crash"];
    let counts = ["sockets", "online_counted_down", "offline_events"].map(|k| crash[k].as_u64());
    assert_eq!(counts, [Some(150); 3], "{life}");
    assert!(crash["cleaned_s"].as_f64().is_some(), "{life}");
    let drain = &life["drain"];
    let left = ["nodes", "failed_exits", "online", "socket_records"].map(|k| drain[k].as_u64());
    assert_eq!(left, [Some(1), Some(0), Some(0), Some(0)], "{life}");
}
