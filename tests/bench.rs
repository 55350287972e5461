//! The load generator's smoke run: `freeim bench all --smoke` starts its own Redis, gateway
//! nodes, raw baseline and workers, runs every scenario at tiny sizes, and must finish with
//! no connection failed and no message missing (it exits non-zero otherwise).

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn bench_smoke_suite_completes_with_nothing_missing() {
    let json = std::env::temp_dir().join(format!("freeim-bench-smoke-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_freeim"))
        .args(["bench", "all", "--smoke", "--json"])
        .arg(&json)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run freeim bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "the smoke suite took {:?}", started.elapsed());

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
