//! Entity state resident in the plugin: a trap throws away the instance holding many entities'
//! states, and every one of them answers from what its journal holds afterwards; a batch with a
//! command that traps fails that command alone.
//!
//! The `ledger` plugin keeps every entry, and its `fail` command panics in the handler (a trap).
//! Each test keeps a model of every entity (balance, entries) and compares every answer with it.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use support::{from_msgpack, msgpack, plugin_bytes, rebuilt};
use weft::entity::{EntitySystem, EntityTypeConfig};
use weft::journal::{InMemoryJournal, Journal};
use weft::plugin::{PluginRegistry, PluginRuntime, RuntimeLimits};

/// A host serving `ledger`, with snapshots every 5 events so recovery reads a snapshot and the
/// events after it.
fn ledger_host(journal: Arc<dyn Journal>) -> EntitySystem {
    let runtime = PluginRuntime::new(RuntimeLimits::default(), None).unwrap();
    let plugins = Arc::new(PluginRegistry::new(Arc::new(runtime)));
    plugins.load("ledger", &plugin_bytes("ledger")).unwrap();
    assert!(
        plugins.get("ledger").unwrap().is_resident(),
        "the ledger is built against resident-entity"
    );
    let system = EntitySystem::single_host(journal, plugins);
    let config = EntityTypeConfig {
        snapshot_every: 5,
        ..EntityTypeConfig::for_plugin("ledger")
    };
    system.bind_type("ledger", config).unwrap();
    system
}

fn record(amount: i64) -> Vec<u8> {
    msgpack(&json!({"op": "record", "amount": amount}))
}

fn fail(message: &str) -> Vec<u8> {
    msgpack(&json!({"op": "fail", "message": message}))
}

/// What an entity should answer: its balance and entry count.
#[derive(Default, Debug, Clone, Copy, PartialEq)]
struct Model {
    balance: i64,
    entries: u64,
}

impl Model {
    fn record(&mut self, amount: i64) {
        self.balance += amount;
        self.entries += 1;
    }
}

async fn balance(system: &EntitySystem, id: &str) -> Model {
    let reply = system
        .ask("ledger", id, msgpack(&json!({"op": "balance"})))
        .await
        .unwrap_or_else(|error| panic!("{id}: {error}"));
    reply_model(&from_msgpack(&reply.reply))
}

fn reply_model(reply: &Value) -> Model {
    Model {
        balance: reply["balance"].as_i64().expect("balance"),
        entries: reply["entries"].as_u64().expect("entries"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_loses_no_entity_of_the_instance_it_takes_down() {
    let system = ledger_host(Arc::new(InMemoryJournal::new()));
    // Enough entities that every instance holding ledger states holds several.
    let ids: Vec<String> = (0..12).map(|n| format!("acct-{n}")).collect();
    let mut model: BTreeMap<String, Model> = BTreeMap::new();
    for round in 0..7i64 {
        for (n, id) in ids.iter().enumerate() {
            // Order-sensitive amounts: a state recovered from the wrong events shows.
            let amount = (n as i64 + 1) * 10 + round * (round - n as i64);
            let reply = system.ask("ledger", id, record(amount)).await.unwrap();
            let entity = model.entry(id.clone()).or_default();
            entity.record(amount);
            assert_eq!(reply_model(&from_msgpack(&reply.reply)), *entity);
        }
    }

    // One entity's command traps: its instance goes, with every state resident in it.
    let trapped = system
        .ask("ledger", &ids[0], fail("planted bug"))
        .await
        .expect_err("the command traps");
    assert_eq!(trapped.code(), "plugin_trapped", "{trapped}");
    assert!(trapped.to_string().contains("planted bug"), "{trapped}");

    // Every entity answers what its journal holds, the trapped one included, and keeps going.
    for id in &ids {
        assert_eq!(balance(&system, id).await, model[id], "{id} after the trap");
    }
    for (n, id) in ids.iter().enumerate() {
        let amount = -(n as i64) - 3;
        let reply = system.ask("ledger", id, record(amount)).await.unwrap();
        let entity = model.get_mut(id).expect("modelled");
        entity.record(amount);
        assert_eq!(reply_model(&from_msgpack(&reply.reply)), *entity, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_traps_fails_alone_in_its_batch() {
    let system = ledger_host(Arc::new(InMemoryJournal::new()));
    let mut model = Model::default();
    for round in 0..5 {
        // Queued together, so the entity takes many of them in one turn and one plugin call.
        let calls: Vec<_> = (0..16i64)
            .map(|n| {
                let system = system.clone();
                let command = if n == 7 {
                    fail(&format!("round {round}"))
                } else {
                    record(n * 3 - round)
                };
                tokio::spawn(async move { system.ask("ledger", "busy", command).await })
            })
            .collect();
        for (n, call) in calls.into_iter().enumerate() {
            let outcome = call.await.unwrap();
            if n == 7 {
                let error = outcome.expect_err("the failing command fails");
                assert_eq!(error.code(), "plugin_trapped", "{error}");
            } else {
                outcome.unwrap_or_else(|error| panic!("command {n} of round {round}: {error}"));
                model.record(n as i64 * 3 - round);
            }
        }
        assert_eq!(balance(&system, "busy").await, model, "after round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_entities_stay_within_the_resident_state_budget() {
    const BUDGET_BYTES: u64 = 1 << 20;
    const ENTITIES: usize = 3_000;
    let limits = RuntimeLimits {
        resident_state_bytes_max: BUDGET_BYTES,
        ..RuntimeLimits::default()
    };
    let runtime = PluginRuntime::new(limits, None).unwrap();
    let plugins = Arc::new(PluginRegistry::new(Arc::new(runtime)));
    plugins.load("ledger", &plugin_bytes("ledger")).unwrap();
    let system = EntitySystem::single_host(Arc::new(InMemoryJournal::new()), plugins);
    system
        .bind_type("ledger", EntityTypeConfig::for_plugin("ledger"))
        .unwrap();

    // Three times more entities than the budget holds, each with its own history.
    let mut model = vec![Model::default(); ENTITIES];
    for (n, entity) in model.iter_mut().enumerate() {
        let amount = n as i64 % 97 - 40;
        system
            .ask("ledger", &format!("e{n}"), record(amount))
            .await
            .unwrap();
        entity.record(amount);
    }
    let budget = system.budget();
    assert!(
        budget.passivations() > 0,
        "{} entities of at least {} bytes each in a budget of {BUDGET_BYTES}",
        ENTITIES,
        weft::entity::ENTITY_OVERHEAD_BYTES
    );
    support::eventually("the active entities shrink to the budget", || async {
        budget.total_bytes() <= BUDGET_BYTES
    })
    .await;
    let most = (BUDGET_BYTES / weft::entity::ENTITY_OVERHEAD_BYTES) as usize;
    assert!(
        system.active_entities() <= most,
        "{} active entities, at most {most} fit",
        system.active_entities()
    );

    // Every entity, passivated or not, answers what it was told.
    for (n, expected) in model.iter().enumerate().step_by(7) {
        assert_eq!(balance(&system, &format!("e{n}")).await, *expected, "e{n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_loaded_again_serves_new_and_old_entities() {
    let runtime = PluginRuntime::new(RuntimeLimits::default(), None).unwrap();
    let plugins = Arc::new(PluginRegistry::new(Arc::new(runtime)));
    let (first, second) = (plugin_bytes("ledger"), rebuilt(&plugin_bytes("ledger")));
    plugins.load("ledger", &first).unwrap();
    let system = EntitySystem::single_host(Arc::new(InMemoryJournal::new()), plugins.clone());
    system
        .bind_type("ledger", EntityTypeConfig::for_plugin("ledger"))
        .unwrap();
    let mut model: BTreeMap<String, Model> = BTreeMap::new();
    let mut record_to = async |id: &str, amount: i64| {
        let reply = system
            .ask("ledger", id, record(amount))
            .await
            .unwrap_or_else(|error| panic!("{id}: {error}"));
        let entity = model.entry(id.to_owned()).or_default();
        entity.record(amount);
        assert_eq!(reply_model(&from_msgpack(&reply.reply)), *entity, "{id}");
    };
    // Entities whose states fill every home of the first load.
    for n in 0..8 {
        record_to(&format!("old-{n}"), n + 1).await;
    }
    // Another build, then the first one again (a deployment that went back to it): a new load
    // of the same build, while the old entities' states still sit in the first load's homes.
    plugins.load("ledger", &second).unwrap();
    plugins.load("ledger", &first).unwrap();
    for n in 0..4 {
        record_to(&format!("new-{n}"), 10 * n - 7).await;
    }
    for n in 0..8 {
        record_to(&format!("old-{n}"), -n).await;
    }
}
