//! Small helpers around `std::sync`.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning: every value the recipes keep behind a mutex stays valid if a
/// panic interrupts an update (each update is a single assignment or push), so a poisoned lock
/// is safe to reuse.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
