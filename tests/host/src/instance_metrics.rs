//! What Spin accounts for each instance, and so what each request pays for it there: the guest's
//! CPU time, from a call hook that reads the clock at every guest/host transition
//! (spin-factors-executor's `CpuTimeCallHook`, behind its default `cpu-time-metrics` feature),
//! the memory its instances grow to, through an async limiter (spin-core's `StoreLimitsAsync`),
//! and three histogram events when the instance is dropped, which Spin's subscriber checks.

use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::{CallHook, ResourceLimiterAsync, Store};

#[derive(Default)]
pub struct InstanceMetrics {
    component_id: Arc<str>,
    last_entry: Option<Instant>,
    cpu_time: Duration,
    memory_consumed: u64,
    memory_on_init: u64,
    enabled: bool,
    /// Calls from the guest into the host.
    pub host_calls: u64,
}

impl InstanceMetrics {
    /// Accounts for the instances of `store`, whose data is `T`.
    pub fn install<T: Send + 'static>(
        store: &mut Store<T>,
        component_id: Arc<str>,
        get: fn(&mut T) -> &mut InstanceMetrics,
    ) {
        let metrics = get(store.data_mut());
        metrics.component_id = component_id;
        metrics.enabled = true;
        store.limiter_async(move |data| get(data));
        store.call_hook(move |mut store, hook| {
            get(store.data_mut()).on_call(hook);
            Ok(())
        });
    }

    /// The bytes of linear memory the instance has grown to.
    pub fn memory(&self) -> u64 {
        self.memory_consumed
    }

    /// Spin records the memory an instance holds once it is instantiated.
    pub fn instantiated(&mut self) {
        self.memory_on_init = self.memory_consumed;
    }

    fn on_call(&mut self, hook: CallHook) {
        if hook.entering_host() {
            self.host_calls += 1;
            if let Some(entry) = self.last_entry.take() {
                self.cpu_time += entry.elapsed();
            }
        } else {
            self.last_entry = Some(Instant::now());
        }
    }
}

#[async_trait::async_trait]
impl ResourceLimiterAsync for InstanceMetrics {
    async fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.memory_consumed += desired.saturating_sub(current) as u64;
        Ok(true)
    }

    async fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

impl Drop for InstanceMetrics {
    /// Spin's `histogram!` events, in its metric naming (trace level, as its macro emits them).
    fn drop(&mut self) {
        if !self.enabled {
            return;
        }
        let component_id = &*self.component_id;
        tracing::trace!(
            histogram.spin.component_cpu_time = self.cpu_time.as_secs_f64(),
            component_id,
            unit = "s"
        );
        tracing::trace!(
            histogram.spin.component_memory_used_on_init = self.memory_on_init,
            component_id,
            unit = "By"
        );
        tracing::trace!(
            histogram.spin.component_memory_used = self.memory_consumed,
            component_id,
            unit = "By"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future as _;

    #[test]
    fn guest_time_is_counted_between_entering_and_leaving_the_guest() {
        let mut m = InstanceMetrics::default();
        m.on_call(CallHook::CallingWasm);
        std::thread::sleep(Duration::from_millis(2));
        m.on_call(CallHook::CallingHost);
        let guest = m.cpu_time;
        std::thread::sleep(Duration::from_millis(2));
        m.on_call(CallHook::ReturningFromHost);
        m.on_call(CallHook::ReturningFromWasm);
        assert!(guest >= Duration::from_millis(2));
        assert!(
            m.cpu_time - guest < Duration::from_millis(2),
            "host time counted"
        );
    }

    #[test]
    fn memory_growth_is_summed() {
        let mut m = InstanceMetrics::default();
        let grow = |m: &mut InstanceMetrics, from, to| {
            let mut fut = std::pin::pin!(m.memory_growing(from, to, None));
            let waker = std::task::Waker::noop();
            match fut
                .as_mut()
                .poll(&mut std::task::Context::from_waker(waker))
            {
                std::task::Poll::Ready(r) => r.unwrap(),
                std::task::Poll::Pending => unreachable!(),
            }
        };
        assert!(grow(&mut m, 0, 65536));
        m.instantiated();
        assert!(grow(&mut m, 65536, 3 * 65536));
        assert_eq!((m.memory_on_init, m.memory_consumed), (65536, 3 * 65536));
    }
}
