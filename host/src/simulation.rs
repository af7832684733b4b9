//! What the deterministic simulators (`cluster::simulation`, `ddata::simulation`) share: the
//! faults of their in-memory network, and running a scenario over fixed, replayable seeds.

/// What the network does to messages. Decided per message from the simulation's generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Faults {
    /// Chance, in thousandths, that a message is lost.
    pub drop_per_mille: u32,
    /// Chance, in thousandths, that a message is delivered twice (each copy with its own delay).
    pub duplicate_per_mille: u32,
    /// Each copy is delayed by a uniform draw from this range; different delays reorder messages.
    pub delay_ms_min: u64,
    pub delay_ms_max: u64,
}

impl Faults {
    /// A healthy LAN: nothing lost or duplicated, 1–5 ms of delay (messages still reorder).
    pub fn none() -> Self {
        Self {
            drop_per_mille: 0,
            duplicate_per_mille: 0,
            delay_ms_min: 1,
            delay_ms_max: 5,
        }
    }
}

/// Runs `run` once per seed and panics with the seed (and how to replay it) on the first failure.
///
/// The seeds are fixed per test (derived from `test` and an index), so every run of the suite does
/// the same; `WEFT_SIM_SEED=<n>` runs only seed `n`, `WEFT_SIM_RUNS=<n>` runs `n` seeds instead of
/// `runs`.
pub fn for_each_seed<R>(
    test: &str,
    runs: u64,
    mut run: impl FnMut(u64) -> Result<R, String>,
) -> Vec<(u64, R)> {
    let seeds: Vec<u64> = match std::env::var("WEFT_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("WEFT_SIM_SEED is a u64")],
        Err(_) => {
            let runs = std::env::var("WEFT_SIM_RUNS")
                .ok()
                .map_or(runs, |n| n.parse().expect("WEFT_SIM_RUNS is a u64"));
            let base = test.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
            (0..runs).map(|index| base.wrapping_add(index)).collect()
        }
    };
    seeds
        .into_iter()
        .map(|seed| match run(seed) {
            Ok(report) => (seed, report),
            Err(failure) => panic!(
                "{test} failed with seed {seed}: {failure}\n\
                 replay: WEFT_SIM_SEED={seed} cargo test -p weft --lib {test}"
            ),
        })
        .collect()
}
