//! Benchmark: weft-crdt's `ORSet` side by side with `crdts::Orswot` (crdts 7) in the same run.
//!
//! Run with `cargo run --release -p weft-crdt --example bench`. Prints a Markdown table: the
//! median time of each operation, encoded sizes (rmp-serde), and the ratio crdts / weft-crdt
//! (above 1: weft-crdt is faster or smaller).

use std::hint::black_box;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use crdts::{CmRDT, CvRDT, Orswot};
use weft_crdt::{Crdt, ORSet, ReplicaId};

/// Elements in each of the two merged sets; half of them in both.
const SET_ELEMENTS: u64 = 10_000;
/// Adds in the add benchmark.
const ADDS: u64 = 100_000;
/// Repetitions of the merge; the median is reported.
const MERGE_RUNS: usize = 51;
/// Repetitions of the 100,000 adds.
const ADD_RUNS: usize = 7;

/// Realistic replica ids: a node name and a per-boot ULID.
const REPLICAS: [&str; 3] = [
    "node-a#01J9ZK8Q7R6W5V4T3S2R1Q0P9N",
    "node-b#01J9ZK8R2M4K6J8H0G2F4E6D8C",
    "node-c#01J9ZK8S5B7A9Z1Y3X5W7V9T1S",
];

static WEFT_REPLICAS: LazyLock<[ReplicaId; 3]> = LazyLock::new(|| REPLICAS.map(ReplicaId::new));

/// The operations the benchmark needs, implemented over both libraries.
trait BenchSet: Clone + Default {
    fn add(&mut self, element: u64, replica: usize);
    /// Merges `other` into `self` and returns how long the merge itself took.
    fn merge_timed(&mut self, other: &Self) -> Duration;
    fn len(&self) -> usize;
}

#[derive(Clone, Default)]
struct WeftSet(ORSet<u64>);

#[derive(Clone, Default)]
struct CrdtsSet(Orswot<u64, String>);

impl BenchSet for WeftSet {
    fn add(&mut self, element: u64, replica: usize) {
        self.0.add(element, &WEFT_REPLICAS[replica]);
    }

    fn merge_timed(&mut self, other: &Self) -> Duration {
        let start = Instant::now();
        self.0.merge(black_box(&other.0));
        start.elapsed()
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

impl BenchSet for CrdtsSet {
    fn add(&mut self, element: u64, replica: usize) {
        let ctx = self
            .0
            .read_ctx()
            .derive_add_ctx(REPLICAS[replica].to_string());
        let op = self.0.add(element, ctx);
        self.0.apply(op);
    }

    /// crdts merges a state taken by value: the clone is made before the clock starts.
    fn merge_timed(&mut self, other: &Self) -> Duration {
        let other = other.0.clone();
        let start = Instant::now();
        self.0.merge(black_box(other));
        start.elapsed()
    }

    fn len(&self) -> usize {
        self.0.read().val.len()
    }
}

/// Two sets of `SET_ELEMENTS` elements each, half of them shared: the shared half added round-robin
/// by all three replicas and exchanged, then each set's own half added by replica b and c.
fn overlapping_pair<S: BenchSet>() -> (S, S) {
    let half = SET_ELEMENTS / 2;
    let mut replicas = [S::default(), S::default(), S::default()];
    for element in half..SET_ELEMENTS {
        let replica = (element % 3) as usize;
        replicas[replica].add(element, replica);
    }
    let mut shared = S::default();
    for replica in &replicas {
        shared.merge_timed(replica);
    }
    let (mut left, mut right) = (shared.clone(), shared);
    for element in 0..half {
        left.add(element, 1);
        right.add(SET_ELEMENTS + element, 2);
    }
    (left, right)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn time_merge<S: BenchSet>(left: &S, right: &S) -> (Duration, S) {
    let mut samples = Vec::with_capacity(MERGE_RUNS);
    let mut merged = left.clone();
    for _ in 0..MERGE_RUNS {
        merged = left.clone();
        samples.push(merged.merge_timed(right));
    }
    (median(samples), merged)
}

fn time_adds<S: BenchSet>() -> (Duration, S) {
    let mut samples = Vec::with_capacity(ADD_RUNS);
    let mut set = S::default();
    for _ in 0..ADD_RUNS {
        set = S::default();
        let start = Instant::now();
        for element in 0..ADDS {
            set.add(black_box(element), 0);
        }
        samples.push(start.elapsed());
    }
    (median(samples), set)
}

fn encoded_sizes<T: serde::Serialize>(state: &T) -> (usize, usize) {
    let compact = rmp_serde::to_vec(state).expect("encodes").len();
    let named = rmp_serde::to_vec_named(state).expect("encodes").len();
    (compact, named)
}

fn format_duration(duration: Duration) -> String {
    let micros = duration.as_secs_f64() * 1e6;
    if micros >= 1_000.0 {
        format!("{:.2} ms", micros / 1_000.0)
    } else {
        format!("{micros:.0} µs")
    }
}

fn format_bytes(bytes: usize) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

fn row(operation: &str, weft: String, crdts: String, ratio: f64) {
    println!("| {operation} | {weft} | {crdts} | {ratio:.1}× |");
}

fn main() {
    let (weft_left, weft_right) = overlapping_pair::<WeftSet>();
    let (crdts_left, crdts_right) = overlapping_pair::<CrdtsSet>();
    assert_eq!(
        (weft_left.len(), crdts_left.len()),
        (SET_ELEMENTS as usize, SET_ELEMENTS as usize)
    );

    let (weft_merge, weft_merged) = time_merge(&weft_left, &weft_right);
    let (crdts_merge, crdts_merged) = time_merge(&crdts_left, &crdts_right);
    assert_eq!(
        weft_merged.len(),
        crdts_merged.len(),
        "both merges give the same set"
    );

    let (weft_adds, weft_added) = time_adds::<WeftSet>();
    let (crdts_adds, crdts_added) = time_adds::<CrdtsSet>();

    let weft_merged_size = encoded_sizes(&weft_merged.0);
    let crdts_merged_size = encoded_sizes(&crdts_merged.0);
    let weft_added_size = encoded_sizes(&weft_added.0);
    let crdts_added_size = encoded_sizes(&crdts_added.0);

    let merged = weft_merged.len();
    println!("| operation | weft-crdt ORSet | crdts 7 Orswot | crdts / weft-crdt |");
    println!("| --- | ---: | ---: | ---: |");
    let time_ratio = |weft: Duration, crdts: Duration| crdts.as_secs_f64() / weft.as_secs_f64();
    let size_ratio = |weft: usize, crdts: usize| crdts as f64 / weft as f64;
    row(
        &format!(
            "merge two {SET_ELEMENTS}-element sets, 50% overlap, 3 replicas (median of {MERGE_RUNS})"
        ),
        format_duration(weft_merge),
        format_duration(crdts_merge),
        time_ratio(weft_merge, crdts_merge),
    );
    row(
        &format!("{ADDS} adds, one replica (median of {ADD_RUNS})"),
        format_duration(weft_adds),
        format_duration(crdts_adds),
        time_ratio(weft_adds, crdts_adds),
    );
    for (label, weft, crdts) in [
        (
            format!("encoded size, merged {merged}-element set, `to_vec`"),
            weft_merged_size.0,
            crdts_merged_size.0,
        ),
        (
            format!("encoded size, merged {merged}-element set, `to_vec_named`"),
            weft_merged_size.1,
            crdts_merged_size.1,
        ),
        (
            format!("encoded size, {ADDS}-element set, `to_vec`"),
            weft_added_size.0,
            crdts_added_size.0,
        ),
        (
            format!("encoded size, {ADDS}-element set, `to_vec_named`"),
            weft_added_size.1,
            crdts_added_size.1,
        ),
    ] {
        row(
            &label,
            format_bytes(weft),
            format_bytes(crdts),
            size_ratio(weft, crdts),
        );
    }
}
