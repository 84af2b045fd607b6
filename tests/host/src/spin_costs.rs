//! Which of Spin's own per-request costs the test host pays. All of them, unless
//! `SPIN_TEST_HOST_WITHOUT` names some (comma-separated), so that each can be measured alone:
//! - `concurrency`: wasmtime's component-model concurrency, which spin-core turns on
//!   (`wasm_component_model_async`); every call into the guest then runs in a concurrent
//!   event loop and every host call becomes a task of it.
//! - `tracing`: Spin's tracing subscriber (`spin_telemetry::init`), which every WASI host call's
//!   span and events are checked against.
//! - `instance-metrics`: what Spin accounts per instance (spin-core, spin-factors-executor
//!   with its default `cpu-time-metrics`): a call hook that reads the clock at every
//!   guest/host transition, an async memory limiter, and three histogram events at drop.
//! - `trigger`: what Spin's HTTP trigger does per request around the guest
//!   (spin-trigger-http's `handle`, `prepare_request` and `WasiHttpExecutor::execute`): the
//!   request's headers copied out as strings and parsed back into a cleared map, the
//!   "Processing request" event and the request counter, and a second task that waits for the
//!   guest to finish after its response has gone.
//! - `app-log`: what each write to a component's stdout or stderr does beside the write
//!   (`ComponentStdioWriter` under `PipedWriteStream`): a mutex, `handle_app_log`'s two
//!   environment reads (is OpenTelemetry logging on?) and its `app_log` event.

use anyhow::Result;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    Concurrency,
    Tracing,
    InstanceMetrics,
    Trigger,
    AppLog,
}

const ALL: [(Cost, &str); 5] = [
    (Cost::Concurrency, "concurrency"),
    (Cost::Tracing, "tracing"),
    (Cost::InstanceMetrics, "instance-metrics"),
    (Cost::Trigger, "trigger"),
    (Cost::AppLog, "app-log"),
];

static WITHOUT: OnceLock<Vec<Cost>> = OnceLock::new();

/// Reads `SPIN_TEST_HOST_WITHOUT` once, before anything asks `pays`; an unknown name is an error.
pub fn init() -> Result<()> {
    let without = parse(std::env::var("SPIN_TEST_HOST_WITHOUT").ok().as_deref())?;
    if !without.is_empty() {
        eprintln!("spin-test-host: without Spin's {without:?}");
    }
    let _ = WITHOUT.set(without);
    Ok(())
}

pub fn pays(cost: Cost) -> bool {
    WITHOUT.get().is_none_or(|w| !w.contains(&cost))
}

fn parse(value: Option<&str>) -> Result<Vec<Cost>> {
    let mut out = Vec::new();
    for name in value.unwrap_or_default().split(',').map(str::trim) {
        if name.is_empty() {
            continue;
        }
        let Some((cost, _)) = ALL.iter().find(|(_, n)| *n == name) else {
            let names: Vec<&str> = ALL.iter().map(|(_, n)| *n).collect();
            anyhow::bail!(
                "SPIN_TEST_HOST_WITHOUT: unknown {name:?}; choose among {}",
                names.join(",")
            );
        };
        out.push(*cost);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(parse(None).unwrap().is_empty());
        assert_eq!(
            parse(Some("tracing, instance-metrics")).unwrap(),
            [Cost::Tracing, Cost::InstanceMetrics]
        );
        assert_eq!(
            parse(Some("trigger,app-log")).unwrap(),
            [Cost::Trigger, Cost::AppLog]
        );
        assert!(parse(Some("gc")).is_err());
    }
}
