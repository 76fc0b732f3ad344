//! Small helpers around `std::sync`.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning: the client's shared tables stay consistent if a panic
/// interrupts an update (each update is a single insert, remove or assignment), so a poisoned
/// lock is safe to reuse; refusing it would turn one panic into a dead client.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
