//! What a guest sees of the world: nothing it could use to be nondeterministic or to reach out.
//!
//! Rust's std on `wasm32-wasip2` always imports some WASI, so guests are linked against a WASI
//! context with nothing granted: no preopened directories, no environment, no arguments, no
//! network, stdin empty. The clocks read the call's `now` (the HLC timestamp from the call
//! context) and the random source is seeded from it, so a call replays identically. Stderr goes
//! to a small bounded buffer, so a guest's panic message reaches the error the user sees. Memory
//! growth beyond the cap fails the call with a clear error. A guest's sleep passes in the call's
//! virtual time at once, so no host call blocks. Log lines are bounded in number and length, and
//! tagged with the plugin and the call's entity; the call's last error line is kept for the error
//! of a trap that follows it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime::{ResourceLimiter, Store, StoreContextMut};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use super::bindings::host::{self, Level};
use super::bindings::types::Context;
use super::limits::OutputLimits;

/// Bytes of stderr kept per call; a guest writing more traps.
const STDERR_CAPACITY_BYTES: usize = 16 << 10;

/// What a guest call is for: its time (an HLC timestamp) and the entity, `(type, id)`, its log
/// lines are tagged with (`None` for calls on no entity's behalf).
#[derive(Debug, Clone, Copy)]
pub struct CallFor<'a> {
    pub now_hlc: u64,
    pub entity: Option<(&'a str, &'a str)>,
}

impl<'a> CallFor<'a> {
    /// A call for the entity `ctx` names, at `ctx.now`.
    pub fn of(ctx: &'a Context) -> Self {
        CallFor {
            now_hlc: ctx.now,
            entity: Some((&ctx.entity_type, &ctx.entity_id)),
        }
    }

    /// Housekeeping on no entity's behalf (dropping a resource).
    pub fn housekeeping() -> Self {
        CallFor {
            now_hlc: 0,
            entity: None,
        }
    }
}

/// The data of one instance's store.
pub struct GuestState {
    /// `name@hash` of the plugin version, for logs and errors.
    plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    stderr: MemoryOutputPipe,
    /// The current call's time in nanoseconds, read by both WASI clocks.
    call_time_ns: Arc<AtomicU64>,
    /// State of the random source, reseeded from the call's time before each call.
    random_state: Arc<AtomicU64>,
    memory: MemoryCap,
    /// The entity of the current call, `(type, id)`, tagging its log lines.
    entity: Option<(String, String)>,
    log_lines: u32,
    /// The current call's last line logged at error: what an SDK reports of an exception
    /// before the call traps, attached to the trap's error.
    last_error_line: Option<String>,
    /// `[limits.output]`: how many log lines a call may write, and how long each may be.
    output: OutputLimits,
}

/// Records the first growth beyond the cap, so the failed call can say what happened, and the
/// linear memory the instance holds, so the pool can budget idle instances.
pub struct MemoryCap {
    pub cap_bytes: usize,
    pub exceeded_by_request: Option<usize>,
    pub current_bytes: usize,
}

impl GuestState {
    pub fn new(plugin: Arc<str>, memory_cap_bytes: usize, output: &OutputLimits) -> Self {
        let call_time_ns = Arc::new(AtomicU64::new(0));
        let random_state = Arc::new(AtomicU64::new(0));
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY_BYTES);
        let wasi = locked_down_wasi(&stderr, &call_time_ns, &random_state);
        GuestState {
            plugin,
            wasi,
            table: ResourceTable::new(),
            stderr,
            call_time_ns,
            random_state,
            memory: MemoryCap {
                cap_bytes: memory_cap_bytes,
                exceeded_by_request: None,
                current_bytes: 0,
            },
            entity: None,
            log_lines: 0,
            last_error_line: None,
            output: output.clone(),
        }
    }

    /// Resets the per-call state: the clocks read the call's time, the random source restarts
    /// from a seed derived from it, log lines are tagged with the call's entity.
    pub fn begin_call(&mut self, call: CallFor<'_>) {
        // HLC timestamps are physical milliseconds << 16 | a logical counter.
        let physical_ms = call.now_hlc >> 16;
        self.call_time_ns
            .store(physical_ms.saturating_mul(1_000_000), Ordering::Relaxed);
        self.random_state.store(call.now_hlc, Ordering::Relaxed);
        self.entity = call
            .entity
            .map(|(entity_type, entity_id)| (entity_type.to_owned(), entity_id.to_owned()));
        self.log_lines = 0;
        self.last_error_line = None;
    }

    /// The current call's last line logged at error, taken.
    pub fn take_last_error_line(&mut self) -> Option<String> {
        self.last_error_line.take()
    }

    /// What the guest wrote to stderr during the call; clears the buffer when it holds anything.
    pub fn take_stderr(&mut self) -> String {
        let written = self.stderr.contents();
        if written.is_empty() {
            return String::new();
        }
        // The pipe cannot be cleared in place: give the guest a fresh one.
        self.stderr = MemoryOutputPipe::new(STDERR_CAPACITY_BYTES);
        self.wasi = locked_down_wasi(&self.stderr, &self.call_time_ns, &self.random_state);
        String::from_utf8_lossy(&written).trim().to_owned()
    }

    pub fn memory_cap(&self) -> &MemoryCap {
        &self.memory
    }

    fn elapsed_pollable(&mut self) -> wasmtime::Result<Resource<DynPollable>> {
        let elapsed = self.table.push(Elapsed)?;
        subscribe(&mut self.table, elapsed)
    }
}

fn locked_down_wasi(
    stderr: &MemoryOutputPipe,
    call_time_ns: &Arc<AtomicU64>,
    random_state: &Arc<AtomicU64>,
) -> WasiCtx {
    let clock = CallClock(call_time_ns.clone());
    WasiCtxBuilder::new()
        .stderr(stderr.clone())
        .wall_clock(clock.clone())
        .monotonic_clock(clock)
        .secure_random(CallRandom(random_state.clone()))
        .insecure_random(CallRandom(random_state.clone()))
        .insecure_random_seed(0)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// The WASI monotonic clock interface whose sleeps the sandbox replaces; a guest importing any
/// 0.2 version of it is linked to this one.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Adds WASI (locked down per store) and the `weft:plugin/host` import to the linker.
///
/// WASI's own sleeps (`subscribe-duration`, `subscribe-instant`, then `poll`) wait in real time,
/// where the CPU bound cannot stop them. Here they pass in the call's virtual time instead: the
/// call's clock moves forward by the time slept and the pollable is ready at once. So no host
/// call blocks, a guest that sleeps in a loop is stopped by its CPU bound like any other loop,
/// and what a guest reads from its clock stays a function of the call's inputs.
pub fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        |mut store: StoreContextMut<'_, GuestState>, (duration_ns,): (u64,)| {
            let state = store.data_mut();
            state.call_time_ns.fetch_add(duration_ns, Ordering::Relaxed);
            Ok((state.elapsed_pollable()?,))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |mut store: StoreContextMut<'_, GuestState>, (when_ns,): (u64,)| {
            let state = store.data_mut();
            state.call_time_ns.fetch_max(when_ns, Ordering::Relaxed);
            Ok((state.elapsed_pollable()?,))
        },
    )?;
    linker.allow_shadowing(false);
    super::bindings::add_host_to_linker(linker)
}

/// A pollable that is ready at once: a sleep that has passed in virtual time.
struct Elapsed;

#[wasmtime_wasi::async_trait]
impl Pollable for Elapsed {
    async fn ready(&mut self) {}
}

/// A store whose memory is capped by its [`MemoryCap`].
pub fn new_store(engine: &wasmtime::Engine, state: GuestState) -> Store<GuestState> {
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.memory);
    store
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl host::Host for GuestState {
    fn log(&mut self, level: Level, msg: String) {
        let msg = self.output.cut_log_line(msg);
        if matches!(level, Level::Error) {
            // Kept even past the line limit: it may explain the trap that follows.
            self.last_error_line = Some(msg.clone());
        }
        self.log_lines += 1;
        let lines_max = self.output.log_lines_per_call_max;
        if self.log_lines > lines_max {
            if self.log_lines == lines_max + 1 {
                tracing::warn!(plugin = %self.plugin, "guest log limit of {lines_max} lines per call (log_lines_per_call_max) reached; dropping the rest");
            }
            return;
        }
        // One line per call of `log`: a guest cannot write what looks like the host's lines.
        let msg = one_line(&msg);
        let plugin = &*self.plugin;
        let (entity_type, entity_id) = match &self.entity {
            Some((entity_type, entity_id)) => {
                (Some(entity_type.as_str()), Some(entity_id.as_str()))
            }
            None => (None, None),
        };
        match level {
            Level::Trace => {
                tracing::trace!(target: "weft::guest", plugin, entity_type, entity_id, "{msg}")
            }
            Level::Debug => {
                tracing::debug!(target: "weft::guest", plugin, entity_type, entity_id, "{msg}")
            }
            Level::Info => {
                tracing::info!(target: "weft::guest", plugin, entity_type, entity_id, "{msg}")
            }
            Level::Warn => {
                tracing::warn!(target: "weft::guest", plugin, entity_type, entity_id, "{msg}")
            }
            Level::Error => {
                tracing::error!(target: "weft::guest", plugin, entity_type, entity_id, "{msg}")
            }
        }
    }
}

/// `line` with its line breaks written as `\n` and `\r`.
fn one_line(line: &str) -> std::borrow::Cow<'_, str> {
    if line.contains(['\n', '\r']) {
        line.replace('\n', "\\n").replace('\r', "\\r").into()
    } else {
        line.into()
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap_bytes {
            self.exceeded_by_request.get_or_insert(desired);
            return Ok(false);
        }
        self.current_bytes += desired.saturating_sub(current);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold a pointer per element; bound them like memory.
        Ok(desired.saturating_mul(size_of::<usize>()) <= self.cap_bytes)
    }
}

/// Both WASI clocks, reading the current call's time.
#[derive(Clone)]
struct CallClock(Arc<AtomicU64>);

impl HostWallClock for CallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

impl HostMonotonicClock for CallClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }

    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A splitmix64 generator over shared state, reseeded per call: deterministic on replay.
struct CallRandom(Arc<AtomicU64>);

impl rand_core::TryRng for CallRandom {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let state = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Ok(z ^ (z >> 31))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let word = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_guest_line_stays_one_line() {
        assert_eq!(one_line("plain"), "plain");
        assert_eq!(
            one_line("a\nINFO weft::node: forged\r\n"),
            "a\\nINFO weft::node: forged\\r\\n"
        );
    }
}
