//! Loads the manifest's components into wasmtime and makes a fresh store per request.

use crate::instance_metrics::InstanceMetrics;
use crate::kv::{KvView, SharedStores};
use crate::manifest::Manifest;
use crate::outbound::{Counters, OutboundPolicy, PolicyHooks};
use crate::pool::Pool;
use crate::routes::Route;
use crate::spin_costs::{pays, Cost};
use crate::variables::{self, AppVariables, ComponentVariables};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, LinkerInstance, ResourceTable, ResourceType};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Everything the server needs: routes in manifest order, each with its component.
pub struct App {
    pub routes: Vec<Route>,
    pub handlers: Vec<Arc<ComponentHandler>>,
    pub counters: Arc<Counters>,
    pub pool: Arc<Pool>,
}

pub struct ComponentHandler {
    /// Shared with each request's task and instance metrics.
    pub id: Arc<str>,
    pre: ProxyPre<RequestState>,
    policy: Arc<OutboundPolicy>,
    counters: Arc<Counters>,
    pool: Arc<Pool>,
    variables: Arc<HashMap<String, variables::Resolved>>,
    /// How many application variables the manifest declares (see `PolicyHooks::unprepared`).
    app_variables: usize,
    logs: crate::logs::ComponentLogs,
    environment: Vec<(String, String)>,
    stores: SharedStores,
    /// The key-value stores the component may open.
    granted: Arc<Vec<String>>,
}

/// The `T` of each request's `Store<T>`.
pub struct RequestState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: PolicyHooks,
    variables: ComponentVariables,
    stores: SharedStores,
    granted: Arc<Vec<String>>,
    pub metrics: InstanceMetrics,
}

impl RequestState {
    fn key_value(&mut self) -> KvView<'_> {
        KvView {
            table: &mut self.table,
            stores: &self.stores,
            granted: &self.granted,
        }
    }
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// What every component of the application shares.
struct Shared {
    stores: SharedStores,
    counters: Arc<Counters>,
    pool: Arc<Pool>,
    log_dir: std::path::PathBuf,
}

impl App {
    /// Compiles every component the triggers use; all manifest errors surface here,
    /// before the server starts listening.
    pub fn load(
        manifest: &Manifest,
        app_vars: &AppVariables,
        stores: SharedStores,
        log_dir: &std::path::Path,
    ) -> Result<Self> {
        let engine = crate::engine::new()?;
        let shared = Shared {
            stores,
            counters: Arc::new(Counters::default()),
            pool: Arc::new(Pool::default()),
            log_dir: log_dir.to_path_buf(),
        };
        let mut loaded: BTreeMap<&str, Arc<ComponentHandler>> = BTreeMap::new();
        let mut routes = Vec::new();
        let mut handlers = Vec::new();
        for trigger in &manifest.triggers {
            let id = trigger.component.as_str();
            let handler = match loaded.get(id) {
                Some(h) => h.clone(),
                None => {
                    let h = Arc::new(
                        ComponentHandler::load(&engine, id, manifest, app_vars, &shared)
                            .with_context(|| format!("cannot load component {id:?}"))?,
                    );
                    loaded.insert(id, h.clone());
                    h
                }
            };
            routes.push(trigger.route.clone());
            handlers.push(handler);
        }
        Ok(Self {
            routes,
            handlers,
            counters: shared.counters,
            pool: shared.pool,
        })
    }
}

impl ComponentHandler {
    fn load(
        engine: &Engine,
        id: &str,
        manifest: &Manifest,
        app_vars: &AppVariables,
        shared: &Shared,
    ) -> Result<Self> {
        let Shared {
            stores,
            counters,
            pool,
            log_dir,
        } = shared;
        let spec = &manifest.components[id];
        stores.check_grants(id, &spec.key_value_stores)?;
        // As Spin: literal entries are checked at load; templated ones are resolved later, and
        // one that resolves to nothing usable (an empty variable) fails the whole list, so
        // every outbound request is denied.
        let (templated, literal): (Vec<&String>, Vec<&String>) = spec
            .allowed_outbound_hosts
            .iter()
            .partition(|h| h.contains("{{"));
        OutboundPolicy::parse(&literal)?;
        let resolved = spec
            .allowed_outbound_hosts
            .iter()
            .map(|h| variables::expand_template(h, app_vars))
            .collect::<Result<Vec<_>>>();
        let policy = match resolved.and_then(|hosts| OutboundPolicy::parse(&hosts)) {
            Ok(policy) => policy,
            Err(e) if !templated.is_empty() => {
                eprintln!("Error parsing allowed outbound hosts: {e:#}");
                OutboundPolicy::deny_all()
            }
            Err(e) => return Err(e),
        };
        let policy = Arc::new(policy);
        let variables = Arc::new(variables::component_variables(&spec.variables, app_vars)?);

        let component = Component::from_file(engine, &spec.source)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("cannot compile {}", spec.source.display()))?;
        let mut linker = Linker::<RequestState>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        variables::add_to_linker(&mut linker, |s| &mut s.variables)?;
        crate::kv::add_to_linker(&mut linker, RequestState::key_value)?;
        stub_unprovided_imports(&mut linker, &component)?;
        let pre = ProxyPre::new(linker.instantiate_pre(&component)?)?;

        Ok(Self {
            id: id.into(),
            pre,
            policy,
            counters: counters.clone(),
            pool: pool.clone(),
            variables,
            app_variables: app_vars.len(),
            logs: crate::logs::ComponentLogs::new(log_dir.clone(), id),
            environment: spec.environment.clone().into_iter().collect(),
            stores: stores.clone(),
            granted: Arc::new(spec.key_value_stores.clone()),
        })
    }

    pub fn new_store(&self) -> Result<Store<RequestState>> {
        let mut wasi = WasiCtxBuilder::new();
        // Guest output goes to this process's stdout/stderr and the component's log files, as
        // in `spin up`; stdin stays empty, as Spin gives components none.
        let (stdout, stderr) = self.logs.open();
        wasi.stdout(stdout).stderr(stderr).envs(&self.environment);
        let state = RequestState {
            table: ResourceTable::new(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            hooks: PolicyHooks {
                policy: self.policy.clone(),
                counters: self.counters.clone(),
                pool: self.pool.clone(),
                unprepared: self.app_variables,
            },
            variables: ComponentVariables(self.variables.clone()),
            stores: self.stores.clone(),
            granted: self.granted.clone(),
            metrics: InstanceMetrics::default(),
        };
        let mut store = Store::new(self.pre.engine(), state);
        if pays(Cost::InstanceMetrics) {
            InstanceMetrics::install(&mut store, self.id.clone(), |s| &mut s.metrics);
        }
        // spin-core's "practically forever": the checks and the ticker cost what they cost
        // under Spin, and no request is cut short by them.
        store.set_epoch_deadline(u64::MAX / 2);
        if crate::engine::counts_fuel() {
            store.set_fuel(u64::MAX)?;
        }
        Ok(store)
    }

    pub fn pre(&self) -> &ProxyPre<RequestState> {
        &self.pre
    }
}

/// Whether the linker implements `import`. WASI 0.2 is matched by package and
/// minor version because the linker resolves patch versions semver-compatibly
/// (a guest's `@0.2.6` links to wasmtime's `@0.2.12`).
fn is_provided(import: &str) -> bool {
    const WASI_0_2: [&str; 7] = [
        "cli",
        "clocks",
        "filesystem",
        "http",
        "io",
        "random",
        "sockets",
    ];
    if let Some((path, version)) = import.strip_prefix("wasi:").and_then(|r| r.split_once('@')) {
        let package = path.split('/').next().unwrap_or_default();
        if WASI_0_2.contains(&package) {
            return version.starts_with("0.2.");
        }
    }
    matches!(
        import,
        "fermyon:spin/variables@2.0.0"
            | "fermyon:spin/key-value@2.0.0"
            | "wasi:keyvalue/store@0.2.0-draft2"
            | "wasi:keyvalue/atomics@0.2.0-draft2"
            | "wasi:keyvalue/batch@0.2.0-draft2"
    )
}

/// Spin offers more interfaces (sqlite, llm, ...); a component that imports
/// them must still load, and only trap if it calls one.
///
/// This replaces `Linker::define_unknown_imports_as_traps`, which in wasmtime 48
/// defines a stub instance under the guest's exact name (`wasi:http/types@0.2.6`)
/// that shadows the semver-compatible real one, so every WASI call would trap.
fn stub_unprovided_imports(linker: &mut Linker<RequestState>, component: &Component) -> Result<()> {
    let engine = component.engine().clone();
    let ty = component.component_type();
    for (name, import) in ty.imports(&engine) {
        if !is_provided(name) {
            stub(&mut linker.root(), &engine, "", name, &import.ty)?;
        }
    }
    Ok(())
}

/// Defines `item` as traps; `path` names it in the trap message (`instance#func`).
fn stub(
    linker: &mut LinkerInstance<'_, RequestState>,
    engine: &wasmtime::Engine,
    path: &str,
    name: &str,
    item: &ComponentItem,
) -> Result<()> {
    let qualified = if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}#{name}")
    };
    match item {
        ComponentItem::ComponentFunc(_) => {
            linker.func_new(name, move |_, _, _, _| {
                wasmtime::bail!("`{qualified}` is not provided by spin-test-host")
            })?;
        }
        ComponentItem::Resource(_) => {
            linker.resource(name, ResourceType::host::<()>(), |_, _| Ok(()))?;
        }
        ComponentItem::ComponentInstance(instance) => {
            let mut inner = linker.instance(name)?;
            for (export, item) in instance.exports(engine) {
                stub(&mut inner, engine, &qualified, export, &item.ty)?;
            }
        }
        // Types need no definition; core modules and components cannot be stubbed
        // and fail at instantiate_pre with wasmtime's own message.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_provided;

    #[test]
    fn provided_imports() {
        assert!(is_provided("wasi:http/types@0.2.6"));
        assert!(is_provided("wasi:cli/environment@0.2.0"));
        assert!(is_provided("fermyon:spin/variables@2.0.0"));
        assert!(is_provided("fermyon:spin/key-value@2.0.0"));
        assert!(!is_provided("fermyon:spin/sqlite@2.0.0"));
        assert!(!is_provided("wasi:keyvalue/store@0.2.0-draft"));
        assert!(!is_provided("wasi:http/types@0.3.0-rc-2026-01-06"));
    }
}
