//! Component output as `spin up` keeps it: a request's stdout and stderr go to the terminal and
//! to `<state dir>/logs/<component>_stdout.txt` and `_stderr.txt`. Spin 4.0.2 opens both files
//! for every request (strace: an `openat` with `O_APPEND`, a `fcntl(F_DUPFD_CLOEXEC)` and two
//! `close`s each); the test host does the same, since that is part of what a request costs on
//! the runtime users run.

use crate::spin_costs::{pays, Cost};
use hyper::body::Bytes;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Where one component's log files are.
pub struct ComponentLogs {
    stdout: PathBuf,
    stderr: PathBuf,
}

impl ComponentLogs {
    /// Creates the directory at load, as Spin does; a directory that cannot be made leaves the
    /// output on the terminal only.
    pub fn new(dir: PathBuf, component: &str) -> Self {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("warning: cannot create {}: {e}", dir.display());
        }
        Self {
            stdout: dir.join(format!("{component}_stdout.txt")),
            stderr: dir.join(format!("{component}_stderr.txt")),
        }
    }

    /// A request's stdout and stderr, their files opened now.
    pub fn open(&self) -> (Tee, Tee) {
        (
            Tee::open(&self.stdout, Terminal::Stdout),
            Tee::open(&self.stderr, Terminal::Stderr),
        )
    }
}

#[derive(Clone, Copy)]
pub enum Terminal {
    Stdout,
    Stderr,
}

/// Writes go to the log file, then to the terminal, each write whole.
#[derive(Clone)]
pub struct Tee {
    file: Option<Arc<File>>,
    terminal: Terminal,
    /// Spin's `PipedWriteStream` holds its writer behind one: every write and flush takes it.
    lock: Arc<Mutex<()>>,
}

impl Tee {
    fn open(path: &std::path::Path, terminal: Terminal) -> Self {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            // Spin keeps a second handle of each (tokio's `File` from the std one).
            .and_then(|f| f.try_clone().map(|_| f))
            .ok()
            .map(Arc::new);
        Self {
            file,
            terminal,
            lock: Arc::default(),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) -> std::io::Result<()> {
        let _held = pays(Cost::AppLog).then(|| {
            let held = self.lock.lock();
            handle_app_log(bytes);
            held
        });
        if let Some(file) = &self.file {
            // A full disk loses the file's copy, never the terminal's.
            let _ = (&**file).write_all(bytes);
        }
        match self.terminal {
            Terminal::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Terminal::Stderr => std::io::stderr().lock().write_all(bytes),
        }
    }

    fn flush_terminal(&self) {
        if pays(Cost::AppLog) {
            let _held = self.lock.lock();
            let _ = std::io::stderr().flush();
        }
    }
}

/// `spin_telemetry::logs::handle_app_log` without an OpenTelemetry logger: whether OTel logging
/// is on is read from the environment at every write, then the line becomes an `app_log` event
/// (which Spin's own filter drops, after checking it).
fn handle_app_log(bytes: &[u8]) {
    let _otel_logs = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    ]
    .iter()
    .any(|key| std::env::var_os(key).is_some_and(|v| !v.is_empty()));
    match std::str::from_utf8(bytes) {
        Ok(text) => tracing::info!(app_log = text),
        Err(_) => tracing::info!(app_log_non_utf8 = bytes.len()),
    }
}

impl IsTerminal for Tee {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Tee {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Tee {
    async fn ready(&mut self) {}
}

impl OutputStream for Tee {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes)
            .map_err(|e| StreamError::LastOperationFailed(e.into()))
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.flush_terminal();
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for Tee {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.write_bytes(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.flush_terminal();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_appends_to_the_components_files() {
        let dir = std::env::temp_dir().join(format!("test-host-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let logs = ComponentLogs::new(dir.clone(), "proxy");
        for line in ["one\n", "two\n"] {
            let (_, mut stderr) = logs.open();
            OutputStream::write(&mut stderr, Bytes::from_static(line.as_bytes())).unwrap();
        }
        let text = std::fs::read_to_string(dir.join("proxy_stderr.txt")).unwrap();
        assert_eq!(text, "one\ntwo\n");
        assert!(dir.join("proxy_stdout.txt").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
