//! spin-test-host: a minimal `spin up` on wasmtime, for running the component where
//! the Spin CLI cannot be installed.

mod app;
mod bindings;
mod cli;
mod engine;
mod instance_metrics;
mod kv;
mod logs;
mod manifest;
mod outbound;
mod pool;
mod routes;
mod server;
mod spin_blocking;
mod spin_costs;
mod telemetry;
mod variables;
mod wasi_kv;

use anyhow::{Context, Result};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

fn main() {
    if let Err(e) = run() {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    spin_costs::init()?;
    if spin_costs::pays(spin_costs::Cost::Tracing) {
        telemetry::init()?;
    }
    let Some(args) = cli::parse(std::env::args().skip(1))? else {
        println!("{}", cli::USAGE);
        return Ok(());
    };
    let manifest = manifest::load(&args.manifest)?;
    let app_vars = variables::resolve_app_variables(&manifest.variables, &args.variables, |k| {
        std::env::var(k).ok()
    })?;
    let state_dir = match &args.state_dir {
        Some(d) => d.clone(),
        None => args
            .manifest
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(".spin"),
    };
    let stores = Arc::new(kv::Stores::load(
        &state_dir,
        args.runtime_config.as_deref(),
    )?);
    let app = Arc::new(app::App::load(
        &manifest,
        &app_vars,
        stores,
        &state_dir.join("logs"),
    )?);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        // Before the announcement: a test that has read it may signal at once, and a SIGUSR1
        // without a handler would end the process.
        let usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
        announce(&app, listener.local_addr()?)?;
        tokio::spawn(print_counters_on_usr1(app.clone(), usr1));
        tokio::select! {
            r = server::serve(app, listener) => r,
            r = shutdown_signal() => r,
        }
    });
    // Don't wait on requests still streaming: a stop should be prompt.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}

/// Prints what `spin up` prints; tests wait for the `Serving` line.
fn announce(app: &app::App, addr: std::net::SocketAddr) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "Serving http://{addr}")?;
    writeln!(out, "Available Routes:")?;
    for (route, handler) in app.routes.iter().zip(&app.handlers) {
        let suffix = if route.is_wildcard() {
            " (wildcard)"
        } else {
            ""
        };
        let path = route.component_route();
        writeln!(out, "  {}: http://{addr}{path}{suffix}", handler.id)?;
    }
    out.flush()?;
    Ok(())
}

/// `kill -USR1 <pid>` prints the upstream connections opened (`CONNECTS n`), the variable
/// reads (`VARIABLE_READS n`), then the outbound requests per origin (one `OUTBOUND {...}`
/// line), in one write.
async fn print_counters_on_usr1(
    app: Arc<app::App>,
    mut usr1: tokio::signal::unix::Signal,
) -> Result<()> {
    while usr1.recv().await.is_some() {
        let mut out = std::io::stdout().lock();
        let lines = format!(
            "CONNECTS {}\nVARIABLE_READS {}\n{}\n",
            app.pool.connects(),
            crate::variables::READS.load(std::sync::atomic::Ordering::Relaxed),
            app.counters.line()
        );
        out.write_all(lines.as_bytes())?;
        out.flush()?;
    }
    Ok(())
}

async fn shutdown_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
