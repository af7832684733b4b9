//! A *home*: one instance of a plugin version that holds many entities' resident states (see
//! `resident`), with the generation of that instance and how many states live in it.

use std::sync::{Mutex, MutexGuard};

use super::instance::Instance;

/// One instance holding resident states, and which generation of it is alive.
#[derive(Default)]
pub(super) struct Home {
    occupant: Mutex<Occupant>,
}

#[derive(Default)]
pub(super) struct Occupant {
    /// `None` until the first state moves in, and after the last one left or a failure.
    pub instance: Option<Instance>,
    /// Bumped each time the instance is thrown away: states of older generations are gone.
    pub generation: u64,
    /// States of the current generation.
    pub residents: usize,
}

impl Home {
    pub(super) fn lock(&self) -> MutexGuard<'_, Occupant> {
        self.occupant.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// States living in this home now.
    pub(super) fn residents(&self) -> usize {
        self.lock().residents
    }
}
