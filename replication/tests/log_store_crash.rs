//! `kill -9` in the middle of flushes of a core's shared Raft log, with
//! four ranges appending, truncating and purging at once: recovery gives
//! each range every entry it acknowledged (and did not truncate or purge
//! later), dense, and nothing of another range.
//!
//! The writer runs in a child process (this test binary again, told by an
//! environment variable) that prints each acknowledgement once openraft's
//! `IOFlushed` fired or a truncation or purge returned; the parent kills it
//! with SIGKILL at a point that varies from run to run, then recovers the
//! log itself. The WAL's flush-delay failpoint keeps flushes in flight when
//! the kill comes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::RaftLogReader;
use openraft_rt::{AsyncRuntime, Oneshot};
use tinkerdb_replication::{Command, CoreLog, Entry, GlommioRuntime, LogId, RangeId};

const CHILD_DIR: &str = "TINKERDB_TEST_LOG_CRASH_CHILD_DIR";
const RANGES: RangeId = 4;
/// The child stops on its own after this long (the parent kills it sooner).
const CHILD_LIMIT: Duration = Duration::from_secs(30);

fn log_id(term: u64, index: u64) -> LogId {
    LogId {
        leader_id: openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 },
        index,
    }
}

/// Entry `index` of `range` in `term`: its value names all three, so a
/// stale or foreign entry never compares equal. Every 5th is 200 KiB, so
/// the log rolls over several 16 MiB segments.
fn entry(range: RangeId, term: u64, index: u64) -> Entry {
    let size = if index.is_multiple_of(5) {
        200 << 10
    } else {
        64
    };
    Entry::new_normal(
        log_id(term, index),
        Command::Put {
            tenant: "crash".into(),
            key: format!("r{range}-i{index}").into_bytes(),
            value: format!("r{range}-t{term}-i{index}-")
                .into_bytes()
                .into_iter()
                .cycle()
                .take(size)
                .collect(),
            expires_at_unix_ms: None,
        },
    )
}

/// One range's writer in the child: appends 1-3 entries at a time (several
/// in flight), truncates now and then (as a follower overwritten by a new
/// leader, whose later entries carry a higher term), purges now and then.
async fn write_range(log: CoreLog, range: RangeId) {
    let mut store = log.open_range(range).unwrap();
    let started = Instant::now();
    let mut terms: BTreeMap<u64, u64> = BTreeMap::new(); // index -> term
    let mut term = 1;
    let mut next = 0;
    let mut round = 0u64;
    while started.elapsed() < CHILD_LIMIT {
        round += 1;
        let count = 1 + (round + range) % 3;
        let entries: Vec<Entry> = (next..next + count)
            .map(|index| entry(range, term, index))
            .collect();
        let (done, flushed) = <GlommioRuntime as AsyncRuntime>::Oneshot::channel();
        say(&format!(
            "append {range} {term} {next} {}",
            next + count - 1
        ));
        store
            .append(entries, IOFlushed::signal(done))
            .await
            .unwrap();
        for index in next..next + count {
            terms.insert(index, term);
        }
        next += count;
        if flushed.await.unwrap().is_ok() {
            say(&format!("ack {range}"));
        }
        if round.is_multiple_of(9) && next >= 2 {
            let keep = next - 2;
            let kept = terms.get(&keep).map(|term| log_id(*term, keep));
            if kept.is_some() {
                store.truncate_after(kept).await.unwrap();
                terms.split_off(&(keep + 1));
                next = keep + 1;
                term += 1;
                say(&format!("trunc {range} {keep}"));
            }
        }
        if round.is_multiple_of(13) && next > 6 {
            let through = next - 5;
            if let Some(at_term) = terms.get(&through).copied() {
                store.purge(log_id(at_term, through)).await.unwrap();
                terms = terms.split_off(&(through + 1));
                say(&format!("purge {range} {through}"));
            }
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

fn child(dir: &Path) {
    let dir = dir.to_owned();
    GlommioRuntime::new(1).block_on(async move {
        let log = CoreLog::open(&dir).unwrap();
        let writers: Vec<_> = (0..RANGES)
            .map(|range| glommio::spawn_local(write_range(log.clone(), range)))
            .collect();
        for writer in writers {
            writer.await;
        }
    });
}

/// The child's log as its lines tell it, per range: `live` is every entry
/// appended and not truncated or purged (index -> term), `acknowledged`
/// the part of it an acknowledgement covered.
#[derive(Default, Debug)]
struct Told {
    live: BTreeMap<u64, u64>,
    acknowledged: BTreeMap<u64, u64>,
}

#[test]
fn kill_9_mid_flush_loses_no_acknowledged_entry_of_any_range() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        child(Path::new(&dir));
        return;
    }
    let dir = std::env::temp_dir().join(format!("tinkerdb-log-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for life in 0..2 {
        let acknowledged = run_child_and_kill(&dir, life);
        check_recovery(&dir, &acknowledged);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the child on `dir` and kills it after a varying number of
/// acknowledgements; returns what it acknowledged, range by range.
fn run_child_and_kill(dir: &PathBuf, life: u32) -> BTreeMap<RangeId, BTreeMap<u64, u64>> {
    // A second life starts over on fresh directories: the child's writers
    // begin at index 0.
    let _ = std::fs::remove_dir_all(dir);
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_9_mid_flush_loses_no_acknowledged_entry_of_any_range",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR, dir)
        .env(tinkerdb_storage::wal::FAILPOINT_FLUSH_DELAY_MS, "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    let kill_after = 600 + (nanos + life as usize * 331) % 900;
    let mut told: BTreeMap<RangeId, Told> = BTreeMap::new();
    let mut acks = 0;
    let mut killed = false;
    let started = Instant::now();
    let reader = BufReader::new(child.stdout.take().unwrap());
    for line in reader.lines() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |at: usize| words[at].parse::<u64>().unwrap();
        let range = match words.first().copied() {
            Some("append" | "ack" | "trunc" | "purge") => told.entry(number(1)).or_default(),
            _ => continue, // libtest's own lines
        };
        match words[0] {
            "append" => {
                for index in number(3)..=number(4) {
                    range.live.insert(index, number(2));
                }
            }
            // Everything appended so far (one writer per range, waiting for
            // each append) is durable: the WAL flushes in order.
            "ack" => {
                range.acknowledged = range.live.clone();
                acks += 1;
            }
            "trunc" => {
                range.live.split_off(&(number(2) + 1));
                range.acknowledged.split_off(&(number(2) + 1));
            }
            _ => {
                range.live = range.live.split_off(&(number(2) + 1));
                range.acknowledged = range.acknowledged.split_off(&(number(2) + 1));
            }
        }
        if !killed && (acks >= kill_after || started.elapsed() > Duration::from_secs(20)) {
            child.kill().unwrap(); // SIGKILL
            killed = true;
            // Lines already in the pipe were printed before the kill.
        }
    }
    let status = child.wait().unwrap();
    assert!(killed, "the child ended on its own: {status}");
    assert!(acks >= 100, "only {acks} acknowledgements before the kill");
    eprintln!("life {life}: killed after {acks} acknowledgements");
    told.into_iter()
        .map(|(range, told)| (range, told.acknowledged))
        .collect()
}

fn check_recovery(dir: &Path, acknowledged: &BTreeMap<RangeId, BTreeMap<u64, u64>>) {
    let dir = dir.to_owned();
    let acknowledged = acknowledged.clone();
    GlommioRuntime::new(1).block_on(async move {
        let log = CoreLog::open(&dir).expect("the log recovers after kill -9");
        for (range, expected) in &acknowledged {
            let mut store = log.open_range(*range).unwrap();
            let state = store.get_log_state().await.unwrap();
            let entries = store.try_get_log_entries(..).await.unwrap();
            // Dense, right after the purge point.
            for pair in entries.windows(2) {
                assert_eq!(pair[0].log_id.index + 1, pair[1].log_id.index, "a hole");
            }
            if let (Some(purged), Some(first)) = (state.last_purged_log_id, entries.first()) {
                assert_eq!(first.log_id.index, purged.index + 1);
            }
            let purged = state.last_purged_log_id.map(|id| id.index);
            let by_index: BTreeMap<u64, &Entry> = entries
                .iter()
                .map(|entry| (entry.log_id.index, entry))
                .collect();
            for (index, term) in expected {
                if purged.is_some_and(|purged| *index <= purged) {
                    continue;
                }
                let found = by_index.get(index).unwrap_or_else(|| {
                    panic!("range {range}: acknowledged entry {index} (term {term}) lost")
                });
                assert_eq!(
                    **found,
                    entry(*range, *term, *index),
                    "range {range}: entry {index} is not the acknowledged one"
                );
            }
        }
    });
}
