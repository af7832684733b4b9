//! Benchmark of durable commands (a program, not a test): `cargo xtask bench entity`.
//!
//! Sends counter increments through `EntitySystem::ask` on the SQLite journal (every reply
//! waits for its event to be committed) from many concurrent callers over many entities, and
//! inserts the same number of rows with plain rusqlite in batched transactions into a table of
//! the same shape, on the same kind of file. The ratio is what the entity machinery (mailboxes,
//! plugin calls, envelopes, group commit) costs over the bare storage engine.

#[path = "support/durable_commands.rs"]
mod durable_commands;

use durable_commands::{CALLERS, ENTITIES};
use std::sync::Arc;
use std::time::Instant;
use weft::journal::{Journal, SqliteJournal};

const COMMANDS: u64 = 40_000;
const RAW_BATCH: usize = 64;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let journal_path = dir.path().join("journal.db");
    let journal: Arc<dyn Journal> = Arc::new(SqliteJournal::open(&journal_path).await?);
    let (sent, entity_secs) = durable_commands::run(journal, COMMANDS).await?;

    let raw_secs = raw_rusqlite(&dir.path().join("raw.db"), sent as usize)?;
    println!(
        "weft entity benchmark: {sent} durable counter commands, {ENTITIES} entities, {CALLERS} concurrent callers"
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| commands/s through EntitySystem::ask (SQLite journal) | {:.0} |",
        sent as f64 / entity_secs
    );
    println!(
        "| rows/s raw rusqlite, {RAW_BATCH} rows per transaction | {:.0} |",
        sent as f64 / raw_secs
    );
    println!(
        "| ratio entity API / raw insert | {:.2} |",
        raw_secs / entity_secs
    );
    Ok(())
}

/// The same rows, inserted with rusqlite in batched transactions, with the journal's durability
/// settings (WAL, synchronous=FULL).
fn raw_rusqlite(path: &std::path::Path, rows: usize) -> anyhow::Result<f64> {
    let mut db = rusqlite::Connection::open(path)?;
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE events (persistence_id TEXT NOT NULL, seq_nr INTEGER NOT NULL,
           writer TEXT NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (persistence_id, seq_nr));",
    )?;
    let payload = rmp_serde::to_vec_named(&serde_json::json!({"type": "incremented", "by": 1}))?;
    let writer = ulid::Ulid::new().to_string();
    let started = Instant::now();
    let mut seq = vec![0u64; ENTITIES as usize];
    for batch_start in (0..rows).step_by(RAW_BATCH) {
        let tx = db.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (persistence_id, seq_nr, writer, payload) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for row in batch_start..(batch_start + RAW_BATCH).min(rows) {
                let entity = row % ENTITIES as usize;
                seq[entity] += 1;
                insert.execute(rusqlite::params![
                    format!("counter|e{entity}"),
                    seq[entity],
                    writer,
                    payload
                ])?;
            }
        }
        tx.commit()?;
    }
    Ok(started.elapsed().as_secs_f64())
}
