//! Benchmark of asks through the entity system against plain actors (a program, not a test):
//! `cargo xtask bench asks`.
//!
//! 64 callers send counter increments over 64 entities, each caller waiting for its reply before
//! sending the next, in two systems in the same run:
//! - weft: `EntitySystem::ask` on the in-memory journal, the counter plugin (Rust, resident
//!   state) deciding and folding every command, the events appended in batches;
//! - plain tokio actors: one task per entity with an mpsc mailbox and a oneshot reply, the same
//!   counter logic compiled natively, the same MessagePack decoding of the command and encoding
//!   of the event and reply, nothing persisted — what an actor library's ask costs at least.
//!
//! The ratio is what durability-ready event sourcing and the Wasm boundary cost over a bare ask.

use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use weft::entity::{EntitySystem, EntityTypeConfig};
use weft::journal::{InMemoryJournal, Journal};
use weft::plugin::{PluginRegistry, PluginRuntime, RuntimeLimits};

const CALLERS: u64 = 64;
const ENTITIES: u64 = 64;
/// Asks per caller, in each system.
const ASKS_PER_CALLER: u64 = 5_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = rmp_serde::to_vec_named(&serde_json::json!({"op": "increment", "by": 1}))?;
    let weft_secs = weft_asks(&command).await?;
    let plain_secs = plain_asks(&command).await?;
    let asks = CALLERS * ASKS_PER_CALLER;
    println!(
        "weft ask benchmark: {asks} counter increments, {CALLERS} callers over {ENTITIES} entities"
    );
    println!("| system | asks/s |");
    println!("|---|---:|");
    println!(
        "| weft EntitySystem::ask, in-memory journal, counter plugin | {:.0} |",
        asks as f64 / weft_secs
    );
    println!(
        "| plain tokio actors (mpsc + oneshot), same logic natively | {:.0} |",
        asks as f64 / plain_secs
    );
    println!("| ratio weft / plain | {:.2} |", plain_secs / weft_secs);
    Ok(())
}

async fn weft_asks(command: &[u8]) -> anyhow::Result<f64> {
    let runtime = PluginRuntime::new(RuntimeLimits::default(), None)?;
    let plugins = Arc::new(PluginRegistry::new(Arc::new(runtime)));
    let wasm =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/counter.wasm");
    plugins.load_file(&wasm, |_, _| Ok(None))?;
    let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let system = EntitySystem::single_host(journal, plugins);
    system.bind_type("counter", EntityTypeConfig::for_plugin("counter"))?;
    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (system, command) = (system.clone(), command.to_vec());
            tokio::spawn(async move {
                for n in 0..ASKS_PER_CALLER {
                    let id = format!("e{}", (caller + n) % ENTITIES);
                    system
                        .ask("counter", &id, command.clone())
                        .await
                        .expect("ask");
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    // Every actor passivates before the runtime goes.
    system.stop().await;
    Ok(seconds)
}

type Ask = (Vec<u8>, oneshot::Sender<Vec<u8>>);

async fn plain_asks(command: &[u8]) -> anyhow::Result<f64> {
    let mailboxes: Arc<Vec<mpsc::Sender<Ask>>> = Arc::new(
        (0..ENTITIES)
            .map(|_| {
                let (mailbox, mut inbox) = mpsc::channel::<Ask>(1024);
                tokio::spawn(async move {
                    let mut state = counter::State::default();
                    let ctx = weft_guest::Context::for_test("counter", "plain");
                    while let Some((command, reply)) = inbox.recv().await {
                        let command: counter::Command =
                            rmp_serde::from_slice(&command).expect("command");
                        let decision =
                            <counter::Counter as weft_guest::Entity>::handle(&state, &ctx, command)
                                .expect("handle");
                        for event in &decision.events {
                            let bytes = rmp_serde::to_vec_named(event).expect("event");
                            let event: counter::Event =
                                rmp_serde::from_slice(&bytes).expect("event");
                            state = <counter::Counter as weft_guest::Entity>::apply(
                                std::mem::take(&mut state),
                                &ctx,
                                &event,
                            );
                        }
                        let _ =
                            reply.send(rmp_serde::to_vec_named(&decision.reply).expect("reply"));
                    }
                });
                mailbox
            })
            .collect(),
    );
    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (mailboxes, command) = (mailboxes.clone(), command.to_vec());
            tokio::spawn(async move {
                for n in 0..ASKS_PER_CALLER {
                    let (reply, answer) = oneshot::channel();
                    mailboxes[((caller + n) % ENTITIES) as usize]
                        .send((command.clone(), reply))
                        .await
                        .expect("send");
                    answer.await.expect("reply");
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await?;
    }
    Ok(started.elapsed().as_secs_f64())
}
