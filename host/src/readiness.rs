//! Whether the node's start-up is done, for `GET /ready` and for the commands that arrive before:
//! the start-up steps still running (each holds a [`StartupStep`]) and the plugins that start-up
//! loads — queued, loaded, or failed.
//!
//! The HTTP port is bound before start-up loading, so the node answers at once; it is ready when
//! every step begun has ended. A plugin that fails to load does not hold readiness back: it is
//! listed as failed, and the node serves what it has. Other start-up steps (waiting on the cluster
//! for something, say) begin a step of their own with [`Readiness::begin`].

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::watch;

/// The start-up state of one node. Cheap to clone; every clone is the same state.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

struct Inner {
    started: Instant,
    state: Mutex<State>,
    ready: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    /// Steps begun and not ended, by name.
    steps: Vec<&'static str>,
    /// Plugins start-up still has to load, in load order (the first is being compiled).
    loading: Vec<String>,
    loaded: usize,
    failed: Vec<FailedLoad>,
}

/// A plugin start-up could not load, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedLoad {
    pub plugin: String,
    pub error: String,
}

/// What `GET /ready` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadinessReport {
    pub ready: bool,
    /// Plugins still queued or compiling, in load order.
    pub loading: Vec<String>,
    pub loaded: usize,
    /// Every plugin start-up loads: loaded, failed and still loading.
    pub total: usize,
    pub failed: Vec<FailedLoad>,
    /// Start-up steps not done yet.
    pub waiting_for: Vec<&'static str>,
    pub elapsed_ms: u64,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new()
    }
}

impl Readiness {
    /// Not ready: the node begins its steps next, and is ready when the last of them ends.
    pub fn new() -> Self {
        Readiness {
            inner: Arc::new(Inner {
                started: Instant::now(),
                state: Mutex::new(State::default()),
                ready: watch::channel(false).0,
            }),
        }
    }

    /// Begins a start-up step: the node is not ready before the returned guard is dropped.
    pub fn begin(&self, step: &'static str) -> StartupStep {
        self.state().steps.push(step);
        StartupStep {
            readiness: self.clone(),
            step,
        }
    }

    /// Adds plugins start-up will load, in the order it loads them.
    pub fn expect_plugins(&self, names: impl IntoIterator<Item = String>) {
        self.state().loading.extend(names);
    }

    /// Records that start-up loaded `plugin`.
    pub fn plugin_loaded(&self, plugin: &str) {
        let mut state = self.state();
        state.take_loading(plugin);
        state.loaded += 1;
    }

    /// Records that start-up could not load `plugin`.
    pub fn plugin_failed(&self, plugin: &str, error: impl ToString) {
        let mut state = self.state();
        state.take_loading(plugin);
        state.failed.push(FailedLoad {
            plugin: plugin.to_owned(),
            error: error.to_string(),
        });
    }

    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Waits until the node is ready.
    pub async fn wait(&self) {
        let mut ready = self.inner.ready.subscribe();
        // The sender lives in `self`: the wait cannot end in an error.
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// Plugins still queued or compiling, in load order.
    pub fn loading(&self) -> Vec<String> {
        self.state().loading.clone()
    }

    pub fn report(&self) -> ReadinessReport {
        let state = self.state();
        ReadinessReport {
            ready: self.is_ready(),
            loading: state.loading.clone(),
            loaded: state.loaded,
            total: state.loaded + state.failed.len() + state.loading.len(),
            failed: state.failed.clone(),
            waiting_for: state.steps.clone(),
            elapsed_ms: self.inner.started.elapsed().as_millis() as u64,
        }
    }

    fn end(&self, step: &'static str) {
        let mut state = self.state();
        if let Some(index) = state.steps.iter().position(|begun| *begun == step) {
            state.steps.remove(index);
        }
        if !state.steps.is_empty() || self.is_ready() {
            return;
        }
        let failed: Vec<&str> = state.failed.iter().map(|f| f.plugin.as_str()).collect();
        let failures = match failed.is_empty() {
            true => String::new(),
            false => format!(" ({})", failed.join(", ")),
        };
        tracing::info!(
            "ready in {:.1} s: {} plugin(s) loaded, {} failed{failures}",
            self.inner.started.elapsed().as_secs_f64(),
            state.loaded,
            failed.len(),
        );
        self.inner.ready.send_replace(true);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn take_loading(&mut self, plugin: &str) {
        if let Some(index) = self.loading.iter().position(|name| name == plugin) {
            self.loading.remove(index);
        }
    }
}

/// A start-up step in progress; the step ends when this is dropped.
pub struct StartupStep {
    readiness: Readiness,
    step: &'static str,
}

impl Drop for StartupStep {
    fn drop(&mut self) {
        self.readiness.end(self.step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_when_the_last_step_ends_and_failed_loads_do_not_hold_it_back() {
        let readiness = Readiness::new();
        let plugins = readiness.begin("plugins");
        let other = readiness.begin("cluster deployments");
        readiness.expect_plugins(["a".to_owned(), "b".to_owned()]);
        assert_eq!(readiness.loading(), ["a", "b"]);
        readiness.plugin_loaded("a");
        readiness.plugin_failed("b", "does not compile");
        drop(plugins);
        let report = readiness.report();
        assert!(!report.ready);
        assert_eq!(report.waiting_for, ["cluster deployments"]);
        assert_eq!((report.loaded, report.total), (1, 2));
        drop(other);
        let report = readiness.report();
        assert!(report.ready);
        assert!(report.loading.is_empty());
        assert_eq!(report.failed[0].plugin, "b");
    }
}
