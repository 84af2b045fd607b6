//! The hand-off Spin makes around its blocking host operations.

/// Runs `f` as Spin runs a variable's resolution or a SQLite operation: under
/// `tokio::task::block_in_place` (spin-factor-variables, key-value-spin `store.rs`), which
/// hands the worker's core and its other tasks to another thread meanwhile. That hand-off is
/// the larger part of what such an operation costs on Spin (measured: a variable naming one
/// application variable +0.13 ms a read), so the test host pays it too.
pub fn as_spin_blocks<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// What Spin's resolution of `n` application variables costs: its environment provider looks
/// each one up under `block_in_place`.
pub fn resolve_app_variables(n: usize) {
    for _ in 0..n {
        as_spin_blocks(|| ());
    }
}
