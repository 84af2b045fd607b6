//! The part of the Spin v2 manifest (spin.toml) this host understands.

use crate::routes::Route;
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct Manifest {
    pub variables: BTreeMap<String, VariableDecl>,
    pub triggers: Vec<HttpTrigger>,
    pub components: BTreeMap<String, Component>,
}

pub struct VariableDecl {
    /// `None` means the variable is required.
    pub default: Option<String>,
}

pub struct HttpTrigger {
    pub route: Route,
    pub component: String,
}

pub struct Component {
    /// Already resolved against the manifest's directory.
    pub source: PathBuf,
    pub allowed_outbound_hosts: Vec<String>,
    /// Component variable name -> template over application variables.
    pub variables: BTreeMap<String, String>,
    /// Labels of the key-value stores it may open.
    pub key_value_stores: Vec<String>,
    pub environment: BTreeMap<String, String>,
}

// Unknown keys (application, build, files, ...) are ignored, as they do not
// change how a component is served here.
#[derive(Deserialize)]
struct RawManifest {
    spin_manifest_version: toml::Value,
    #[serde(default)]
    variables: BTreeMap<String, RawVariable>,
    #[serde(default)]
    trigger: RawTriggers,
    #[serde(default)]
    component: BTreeMap<String, RawComponent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariable {
    default: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    #[allow(dead_code)] // accepted for compatibility; nothing here is logged anyway
    secret: bool,
}

#[derive(Deserialize, Default)]
struct RawTriggers {
    #[serde(default)]
    http: Vec<RawHttpTrigger>,
}

#[derive(Deserialize)]
struct RawHttpTrigger {
    route: toml::Value,
    component: toml::Value,
}

#[derive(Deserialize)]
struct RawComponent {
    source: toml::Value,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
}

pub fn load(path: &Path) -> Result<Manifest> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read manifest {}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    parse(&text, dir).with_context(|| format!("invalid manifest {}", path.display()))
}

fn parse(text: &str, dir: &Path) -> Result<Manifest> {
    let raw: RawManifest = toml::from_str(text)?;
    ensure!(
        raw.spin_manifest_version.as_integer() == Some(2),
        "only spin_manifest_version = 2 is supported"
    );

    let mut variables = BTreeMap::new();
    for (name, var) in raw.variables {
        crate::variables::validate_name(&name)
            .map_err(|e| anyhow!("invalid variable name {name:?}: {e}"))?;
        // Spin insists on exactly one of the two.
        ensure!(
            var.default.is_some() != var.required,
            "variable {name:?} must have exactly one of `default` or `required = true`"
        );
        variables.insert(
            name,
            VariableDecl {
                default: var.default,
            },
        );
    }

    let mut components = BTreeMap::new();
    for (id, c) in raw.component {
        let Some(source) = c.source.as_str() else {
            bail!("component {id:?}: only a local file path is supported as `source`");
        };
        components.insert(
            id,
            Component {
                source: dir.join(source),
                allowed_outbound_hosts: c.allowed_outbound_hosts,
                variables: c.variables,
                key_value_stores: c.key_value_stores,
                environment: c.environment,
            },
        );
    }

    let mut triggers = Vec::new();
    for t in raw.trigger.http {
        let Some(component) = t.component.as_str() else {
            bail!("[[trigger.http]] `component` must name a [component.<id>] table");
        };
        ensure!(
            components.contains_key(component),
            "[[trigger.http]] names component {component:?}, which is not defined"
        );
        // `route = { private = true }` makes a component reachable only from
        // other components, which this host does not support: skip it.
        let Some(route) = t.route.as_str() else {
            continue;
        };
        triggers.push(HttpTrigger {
            route: Route::parse(route)?,
            component: component.to_string(),
        });
    }
    ensure!(!triggers.is_empty(), "no [[trigger.http]] routes");

    Ok(Manifest {
        variables,
        triggers,
        components,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_project_shape() {
        let m = parse(
            r#"
spin_manifest_version = 2
[application]
name = "x"
[variables]
upstream = { default = "https://a.example" }
token = { required = true, secret = true }
[[trigger.http]]
route = "/..."
component = "c"
[component.c]
source = "target/c.wasm"
allowed_outbound_hosts = ["{{ upstream }}"]
[component.c.variables]
upstream = "{{ upstream }}"
[component.c.build]
command = "cargo build"
"#,
            Path::new("/app"),
        )
        .unwrap();
        assert_eq!(
            m.variables["upstream"].default.as_deref(),
            Some("https://a.example")
        );
        assert!(m.variables["token"].default.is_none());
        assert_eq!(
            m.components["c"].source,
            PathBuf::from("/app/target/c.wasm")
        );
        assert_eq!(m.triggers[0].component, "c");
    }

    #[test]
    fn rejects_both_default_and_required() {
        let text = r#"
spin_manifest_version = 2
[variables]
v = { default = "x", required = true }
[[trigger.http]]
route = "/..."
component = "c"
[component.c]
source = "c.wasm"
"#;
        assert!(parse(text, Path::new(".")).is_err());
    }
}
