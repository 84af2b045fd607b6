//! The wasmtime engine, configured as Spin's `spin-core` configures it: the pooling instance
//! allocator (slots reserved up front, the first 2 MiB of each linear memory kept resident
//! between requests), epoch interruption with its 10 ms ticker, and component-model
//! concurrency. Without them every request paid for mapping, faulting in and unmapping a fresh
//! linear memory, which Spin does not, and the guest's code ran without the epoch checks and
//! the concurrent event loop Spin runs it in; the test host's CPU per request would not stand
//! for a real deployment's. Spin's environment variables tune it the same way.

use crate::spin_costs::{pays, Cost};
use anyhow::Result;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

const MB: u64 = 1 << 20;
const GB: usize = 1 << 30;

pub fn new() -> Result<Engine> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    if pays(Cost::Concurrency) {
        config.wasm_component_model_async(true);
    } else {
        config.concurrency_support(false);
    }
    // For `perf record`: names the guest's compiled functions in /tmp/perf-<pid>.map.
    if std::env::var_os("SPIN_TEST_HOST_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if counts_fuel() {
        config.consume_fuel(true);
    }
    if pooling()? {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config()?));
    }
    let engine = Engine::new(&config)?;
    spawn_epoch_ticker(&engine);
    Ok(engine)
}

/// `SPIN_TEST_HOST_FUEL=1`: count the wasm instructions each request's instance runs and print
/// them, with its calls into the host (counted by the instance metrics' hook) and the linear
/// memory it grew to, when it ends (`guest fuel …`). Not Spin's (fuel checks slow the guest down): counts that hardly move
/// with the machine's load, for telling whether a change to the guest made it do less.
/// Read once: each request's store asks, and Spin reads no environment there.
pub fn counts_fuel() -> bool {
    static FUEL: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        std::env::var_os("SPIN_TEST_HOST_FUEL").is_some_and(|v| v == "1")
    });
    *FUEL
}

/// spin-core's ticker: the epoch advances every 10 ms for as long as the engine lives.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(10));
        let Some(engine) = weak.upgrade() else { break };
        engine.increment_epoch();
    });
}

/// Spin's `SPIN_WASMTIME_POOLING` (1 or 0); otherwise on, as on any 64-bit Linux Spin probes.
fn pooling() -> Result<bool> {
    match std::env::var("SPIN_WASMTIME_POOLING").as_deref() {
        Err(_) | Ok("1") => Ok(true),
        Ok("0") => Ok(false),
        Ok(other) => anyhow::bail!("SPIN_WASMTIME_POOLING={other}: only 1 or 0"),
    }
}

/// spin-core's values and the names of the variables that override them.
fn pooling_config() -> Result<PoolingAllocationConfig> {
    let max_instances: u32 = env("SPIN_MAX_INSTANCE_COUNT", 1_000)?;
    let mut c = PoolingAllocationConfig::default();
    c.total_component_instances(env("SPIN_WASMTIME_INSTANCE_COUNT", max_instances)?)
        .total_memories(env("SPIN_WASMTIME_TOTAL_MEMORIES", max_instances)?)
        .total_tables(env("SPIN_WASMTIME_TOTAL_TABLES", 2 * max_instances)?)
        .total_stacks(env("SPIN_WASMTIME_TOTAL_STACKS", max_instances)?)
        .total_core_instances(env(
            "SPIN_WASMTIME_TOTAL_CORE_INSTANCES",
            4 * max_instances,
        )?)
        .table_elements(env("SPIN_WASMTIME_INSTANCE_TABLE_ELEMENTS", 100_000)?)
        .max_component_instance_size(env("SPIN_WASMTIME_INSTANCE_SIZE", 10 * MB)? as usize)
        .max_core_instance_size(env("SPIN_WASMTIME_CORE_INSTANCE_SIZE", 10 * MB)? as usize)
        .max_core_instances_per_component(env("SPIN_WASMTIME_CORE_INSTANCE_COUNT", 200)?)
        .max_tables_per_component(env("SPIN_WASMTIME_INSTANCE_TABLES", 64)?)
        .max_memories_per_component(env("SPIN_WASMTIME_INSTANCE_MEMORIES", 32)?)
        .max_tables_per_module(env("SPIN_WASMTIME_MAX_TABLES_PER_MODULE", 2)?)
        .max_memories_per_module(env("SPIN_WASMTIME_MAX_MEMORIES_PER_MODULE", 2)?)
        .max_memory_size(4 * GB)
        .linear_memory_keep_resident(
            env("SPIN_WASMTIME_LINEAR_MEMORY_KEEP_RESIDENT", 2 * MB)? as usize
        )
        .table_keep_resident(env("SPIN_WASMTIME_TABLE_KEEP_RESIDENT", MB / 2)? as usize);
    Ok(c)
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v}: not a number")),
        Err(_) => Ok(default),
    }
}
