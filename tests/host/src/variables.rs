//! Application variables (resolved once at startup, in `spin up`'s order) and the
//! `fermyon:spin/variables` interface that hands component variables to the guest.

use crate::manifest::VariableDecl;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::bindings::variables::{self as wit, Error as WitError};

/// Spin's variable-name rule (spin-expressions `Key::validate`); names map onto
/// env vars, so they are kept this strict.
pub fn validate_name(name: &str) -> Result<(), String> {
    let Some(first) = name.bytes().next() else {
        return Err("must not be empty".into());
    };
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "invalid character {c:?}: only lower-case letters, digits and underscores are allowed"
        ));
    }
    if !first.is_ascii_lowercase() {
        return Err("must start with a lower-case letter".into());
    }
    if name.ends_with('_') {
        return Err("must end with a letter or digit".into());
    }
    if name.contains("__") {
        return Err("must not contain consecutive underscores".into());
    }
    Ok(())
}

/// Resolved application variables, by name.
pub type AppVariables = BTreeMap<String, String>;

/// `--variable` first, then `SPIN_VARIABLE_<NAME>`, then the manifest default.
pub fn resolve_app_variables(
    decls: &BTreeMap<String, VariableDecl>,
    cli: &[(String, String)],
    env: impl Fn(&str) -> Option<String>,
) -> Result<AppVariables> {
    for (name, _) in cli {
        if !decls.contains_key(name) {
            eprintln!("warning: --variable {name} is not declared in [variables]; ignored");
        }
    }
    let mut resolved = AppVariables::new();
    let mut missing = Vec::new();
    for (name, decl) in decls {
        let env_name = format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase());
        let value = cli
            .iter()
            .rev() // the last --variable for a name wins
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .or_else(|| env(&env_name))
            .or_else(|| decl.default.clone());
        match value {
            Some(v) => {
                resolved.insert(name.clone(), v);
            }
            None => missing.push(format!("{name:?} (--variable {name}=VALUE or {env_name})")),
        }
    }
    if !missing.is_empty() {
        bail!(
            "required application variable(s) not set: {}",
            missing.join(", ")
        );
    }
    Ok(resolved)
}

/// Expands `{{ name }}` references to application variables inside literal text.
pub fn expand_template(template: &str, vars: &AppVariables) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .with_context(|| format!("unterminated '{{{{' in template {template:?}"))?;
        let name = after[..end].trim();
        let value = vars
            .get(name)
            .with_context(|| format!("template {template:?} uses unknown variable {name:?}"))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A component variable: its value, and how many application variables its template names.
pub struct Resolved {
    value: String,
    names: usize,
}

/// Resolves a component's `[component.<id>.variables]` templates.
pub fn component_variables(
    templates: &BTreeMap<String, String>,
    app: &AppVariables,
) -> Result<HashMap<String, Resolved>> {
    templates
        .iter()
        .map(|(name, template)| {
            validate_name(name).map_err(|e| anyhow::anyhow!("component variable {name:?}: {e}"))?;
            let resolved = Resolved {
                value: expand_template(template, app)?,
                names: template.matches("{{").count(),
            };
            Ok((name.clone(), resolved))
        })
        .collect()
}

/// Per-store state behind `fermyon:spin/variables`.
pub struct ComponentVariables(pub Arc<HashMap<String, Resolved>>);

/// Every `variables::get` since the host started: on Spin each read costs host memory, so a
/// test counts them per request. `SIGUSR1` prints it.
pub static READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl wit::Host for ComponentVariables {
    fn get(&mut self, name: String) -> Result<String, WitError> {
        READS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        validate_name(&name).map_err(|e| WitError::InvalidName(format!("{name:?}: {e}")))?;
        let resolved = self.0.get(&name).ok_or_else(|| {
            WitError::Undefined(format!("no variable {name:?} for this component"))
        })?;
        // Spin resolves the template again at every read, each application variable it names
        // through its providers, one by one, each under `block_in_place`.
        crate::spin_blocking::resolve_app_variables(resolved.names);
        Ok(resolved.value.clone())
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut ComponentVariables,
) -> Result<()> {
    wit::add_to_linker::<T, wasmtime::component::HasSelf<ComponentVariables>>(linker, get)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decls(items: &[(&str, Option<&str>)]) -> BTreeMap<String, VariableDecl> {
        items
            .iter()
            .map(|(n, d)| {
                (
                    n.to_string(),
                    VariableDecl {
                        default: d.map(str::to_string),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn precedence_cli_env_default() {
        let d = decls(&[("a", Some("da")), ("b", Some("db")), ("c", Some("dc"))]);
        let cli = vec![("a".to_string(), "cli".to_string())];
        let env = |k: &str| match k {
            "SPIN_VARIABLE_A" | "SPIN_VARIABLE_B" => Some("env".to_string()),
            _ => None,
        };
        let v = resolve_app_variables(&d, &cli, env).unwrap();
        assert_eq!(v["a"], "cli");
        assert_eq!(v["b"], "env");
        assert_eq!(v["c"], "dc");
    }

    #[test]
    fn required_without_value_fails() {
        let d = decls(&[("token", None)]);
        let err = resolve_app_variables(&d, &[], |_| None).unwrap_err();
        assert!(err.to_string().contains("SPIN_VARIABLE_TOKEN"), "{err}");
        let ok = resolve_app_variables(&d, &[], |_| Some("x".into())).unwrap();
        assert_eq!(ok["token"], "x");
    }

    #[test]
    fn templates() {
        let vars: AppVariables = [("up".to_string(), "https://a".to_string())].into();
        assert_eq!(expand_template("{{ up }}", &vars).unwrap(), "https://a");
        assert_eq!(expand_template("x{{up}}/y", &vars).unwrap(), "xhttps://a/y");
        assert_eq!(expand_template("plain", &vars).unwrap(), "plain");
        assert!(expand_template("{{ nope }}", &vars).is_err());
        assert!(expand_template("{{ up", &vars).is_err());
    }

    #[test]
    fn names() {
        for ok in ["a", "abc", "a1b2", "a_1", "blob_redirect"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "aX", "1bc", "_x", "x.y", "x_", "a__b", "x-y"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
