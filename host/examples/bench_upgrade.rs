//! Benchmark of a verified plugin upgrade (a program, not a test): `cargo xtask bench upgrade`.
//!
//! Writes `ENTITIES` × `EVENTS_PER_ENTITY` counter events straight into a SQLite journal (big
//! batches, no commands), then times `weft::upgrade::upgrade` of the counter plugin to a rebuild
//! of itself: every stream replayed from event 1 through both builds, states compared after
//! every event. Prints events replayed, the time and the rate.

#[path = "../tests/support/plugins.rs"]
mod support;

use std::sync::Arc;
use std::time::Instant;
use support::{plugin_bytes, rebuilt, registry};
use ulid::Ulid;
use weft::cluster::Deployer;
use weft::deployments::Deployments;
use weft::entity::{EntitySystem, EntityTypeConfig, persistence_id};
use weft::journal::{EventEnvelope, Journal, SqliteJournal};
use weft::plugin::RuntimeLimits;
use weft::upgrade::{UpgradeOptions, upgrade};

const ENTITIES: u64 = 100;
const EVENTS_PER_ENTITY: u64 = 10_000;
const BATCH: u64 = 5_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let journal: Arc<dyn Journal> = Arc::new(SqliteJournal::open(dir.path().join("j.db")).await?);
    let payload = rmp_serde::to_vec_named(&counter::Event::Incremented { by: 1 })?;
    let writer = Ulid::new();
    let written = Instant::now();
    for entity in 0..ENTITIES {
        let pid = persistence_id("counter", &format!("c{entity}"));
        for first in (1..=EVENTS_PER_ENTITY).step_by(BATCH as usize) {
            let events = (first..first + BATCH)
                .map(|seq_nr| EventEnvelope {
                    persistence_id: pid.clone(),
                    seq_nr,
                    writer,
                    fencing_token: 0,
                    timestamp: (1_700_000_000_000 + seq_nr) << 16,
                    origin_replica: String::new(),
                    origin_seq_nr: seq_nr,
                    version: Default::default(),
                    concurrent: false,
                    plugin: "counter@bench".to_owned(),
                    payload: payload.clone(),
                    idempotency: None,
                })
                .collect();
            journal.append(&pid, first - 1, 0, events).await?;
        }
    }
    let total = ENTITIES * EVENTS_PER_ENTITY;
    println!(
        "wrote {total} events ({ENTITIES} entities) in {:.1} s",
        written.elapsed().as_secs_f64()
    );

    let plugins = Arc::new(registry(RuntimeLimits::default(), None));
    plugins.load("counter", &plugin_bytes("counter"))?;
    let entities = EntitySystem::single_host(journal, plugins.clone());
    entities.bind_type("counter", EntityTypeConfig::for_plugin("counter"))?;
    let deployments = Arc::new(Deployments::open(dir.path())?);
    let deployer = Deployer::new(plugins.clone(), entities.clone(), deployments, usize::MAX);
    let next = rebuilt(&plugin_bytes("counter"));

    let started = Instant::now();
    let report = tokio::task::spawn_blocking(move || {
        upgrade(
            &entities,
            &plugins,
            &deployer,
            "counter",
            &next,
            UpgradeOptions::default(),
        )
    })
    .await??;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.events_replayed == total && report.activated,
        "the upgrade did not replay every event: {report:?}"
    );
    println!(
        "upgrade verified: {} entities, {} events through both builds in {seconds:.2} s \
         (replay {:.2} s) = {:.0} events/s, verdict {:?}",
        report.entities_checked,
        report.events_replayed,
        report.replay_ms / 1e3,
        report.events_replayed as f64 / (report.replay_ms / 1e3),
        report.verdict
    );
    Ok(())
}
