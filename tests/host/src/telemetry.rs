//! Spin's tracing subscriber, as `spin_telemetry::init` installs it without OpenTelemetry: a
//! stderr layer behind `RUST_LOG` plus Spin's own directives, and the `alert_in_dev` layer.
//! Its two field directives make every callsite's interest "sometimes", so each span and
//! event of every WASI host call is checked at run time; without a subscriber those checks
//! cost nothing, and the test host would not pay what `spin up` pays per host call.

use anyhow::Result;
use std::io::IsTerminal;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::{filter, fmt, prelude::*, EnvFilter, Layer};

pub fn init() -> Result<()> {
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(
            EnvFilter::from_default_env()
                .add_directive("wasmtime_wasi_http=warn".parse()?)
                .add_directive("watchexec=off".parse()?)
                .add_directive("[{app_log}]=off".parse()?)
                .add_directive("[{app_log_non_utf8}]=off".parse()?),
        );
    let alerts = AlertInDev.with_filter(filter::filter_fn(|meta| {
        meta.fields().field("alert_in_dev").is_some()
    }));
    tracing_subscriber::registry()
        .with(stderr)
        .with(alerts)
        .try_init()?;
    Ok(())
}

/// Prints an event tagged `alert_in_dev` as a warning whatever `RUST_LOG` says, as Spin does.
struct AlertInDev;

impl<S: Subscriber> Layer<S> for AlertInDev {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        event.record(&mut WarnMessage);
    }
}

struct WarnMessage;

impl Visit for WarnMessage {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            eprintln!("Warning: {value:?}");
        }
    }
}
