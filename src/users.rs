//! The proxy's own users (the `users` variable, JSON, secret): who may log in, with a password
//! or an access token, until when, and what each may do on which route. Nothing here is a
//! password: passwords are kept as argon2id or bcrypt hashes, access tokens as SHA-256 digests
//! (they are random, so a fast hash is enough).
//!
//! ```json
//! [{"name": "alice", "password": "$argon2id$v=19$…", "expires": "2027-06-30", "admin": true,
//!   "access": [{"routes": ["private"], "repositories": ["team/**"], "actions": ["pull"]}],
//!   "tokens": [{"name": "ci", "hash": "sha256:…", "expires": "2027-01-01",
//!               "access": [{"repositories": ["team/web"]}]}]}]
//! ```

use crate::config_error::ConfigError;
use crate::repository_pattern::Pattern;
use serde::Deserialize;

/// What a grant allows on a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    /// As scopes name it (`repository:web:pull,push`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    pub fn parse(text: &str) -> Option<Action> {
        match text {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

fn pull_only() -> Vec<Action> {
    vec![Action::Pull]
}

/// Repositories (patterns over client-side names) and actions, on some routes (all if none
/// is named).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    #[serde(default)]
    routes: Vec<String>,
    repositories: Vec<Pattern>,
    #[serde(default = "pull_only")]
    actions: Vec<Action>,
}

impl Grant {
    fn allows(&self, route: &str, repository: &str, action: Action) -> bool {
        (self.routes.is_empty() || self.routes.iter().any(|r| r == route))
            && self.actions.contains(&action)
            && crate::repository_pattern::any(&self.repositories, repository)
    }

    fn on_route(&self, route: &str) -> bool {
        self.routes.is_empty() || self.routes.iter().any(|r| r == route)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password: Option<String>,
    expires: Option<String>,
    admin: Option<bool>,
    #[serde(default)]
    access: Vec<Grant>,
    #[serde(default)]
    tokens: Vec<RawToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    hash: String,
    expires: Option<String>,
    access: Option<Vec<Grant>>,
}

#[derive(Clone, PartialEq, Eq)]
struct User {
    name: String,
    password: Option<String>,
    expires: Option<u64>,
    admin: bool,
    access: Vec<Grant>,
    tokens: Vec<AccessToken>,
}

#[derive(Clone, PartialEq, Eq)]
struct AccessToken {
    name: String,
    digest: Vec<u8>,
    expires: Option<u64>,
    access: Option<Vec<Grant>>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Users(Vec<User>);

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|u| u.name.as_str()).collect();
        write!(f, "Users({names:?})")
    }
}

/// Access tokens start with this, so that the token endpoint knows one from a password.
pub const TOKEN_PREFIX: &str = "srp_";

/// Who logged in: a user, by password or by one of their access tokens (whose grants then
/// narrow the user's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub admin: bool,
    /// The access token's name, when one was used.
    pub token: Option<String>,
    grants: Vec<Grant>,
    token_grants: Option<Vec<Grant>>,
}

impl Principal {
    /// Whether the user (and the token used, if any) may do `action` on `repository`.
    pub fn may(&self, route: &str, repository: &str, action: Action) -> bool {
        let allowed = |grants: &[Grant]| grants.iter().any(|g| g.allows(route, repository, action));
        allowed(&self.grants) && self.token_grants.as_deref().is_none_or(allowed)
    }

    /// Whether the user holds any grant on the route (a catalog is then filtered by `may`).
    pub fn any_on(&self, route: &str) -> bool {
        let on = |grants: &[Grant]| grants.iter().any(|g| g.on_route(route));
        on(&self.grants) && self.token_grants.as_deref().is_none_or(on)
    }

    /// The patterns of what the user (and the token used, if any) may pull on `route`: one
    /// list each, a repository must match one pattern of every list. What a catalog shows.
    pub fn visible(&self, route: &str) -> Vec<Vec<String>> {
        let pulls = |grants: &[Grant]| {
            grants
                .iter()
                .filter(|g| g.on_route(route) && g.actions.contains(&Action::Pull))
                .flat_map(|g| g.repositories.iter().map(|p| p.as_str().to_string()))
                .collect::<Vec<_>>()
        };
        let mut lists = vec![pulls(&self.grants)];
        lists.extend(self.token_grants.as_deref().map(pulls));
        lists
    }
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such user, a wrong password, or no such access token: one answer for all three.
    Unknown,
    /// The user, or the access token, has expired.
    Expired,
}

fn date(user: &str, field: &str, text: Option<&str>) -> Result<Option<u64>, ConfigError> {
    text.map(|t| {
        crate::civil_time::parse(t).ok_or_else(|| {
            ConfigError(format!(
                "variable users: user {user:?}: {field}: expected a date (2027-06-30) or a \
                 time (2027-06-30T12:00:00Z)"
            ))
        })
    })
    .transpose()
}

impl Users {
    /// Parses the `users` variable. Errors name the user and the field, never a value.
    pub fn parse(json: &str) -> Result<Users, ConfigError> {
        let raws: Vec<RawUser> = serde_json::from_str(json).map_err(|e| {
            ConfigError(format!(
                "variable users: not a JSON array of users (an unknown field, a value of the \
                 wrong type, or a repository pattern with other characters than lower-case \
                 name characters and '*') at line {}, column {}",
                e.line(),
                e.column()
            ))
        })?;
        let mut users: Vec<User> = Vec::new();
        for (i, raw) in raws.into_iter().enumerate() {
            let valid_name = !raw.name.is_empty()
                && raw.name.len() <= 64
                && raw
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
            if !valid_name {
                return Err(ConfigError(format!(
                    "variable users: user {}: name: letters, digits, '-', '_', '.' and '@' only",
                    i + 1
                )));
            }
            let name = raw.name;
            let err = |field: &str, what: &str| {
                ConfigError(format!("variable users: user {name:?}: {field}: {what}"))
            };
            if users.iter().any(|u| u.name == name) {
                return Err(err("name", "a second user has this name"));
            }
            if let Some(p) = &raw.password {
                if !crate::password::is_supported(p) {
                    return Err(err(
                        "password",
                        "expected an argon2id hash ($argon2id$…) or a bcrypt one ($2y$…), never \
                         the password itself (make one with tests/users)",
                    ));
                }
            }
            let mut tokens = Vec::new();
            for t in raw.tokens {
                let digest = t
                    .hash
                    .strip_prefix("sha256:")
                    .and_then(crate::digest::unhex)
                    .filter(|d| d.len() == 32)
                    .ok_or_else(|| err("tokens", "hash: expected sha256:<64 hex digits>"))?;
                tokens.push(AccessToken {
                    expires: date(&name, "tokens: expires", t.expires.as_deref())?,
                    name: t.name,
                    digest,
                    access: t.access,
                });
            }
            users.push(User {
                expires: date(&name, "expires", raw.expires.as_deref())?,
                password: raw.password,
                admin: raw.admin.unwrap_or(false),
                access: raw.access,
                tokens,
                name,
            });
        }
        Ok(Users(users))
    }

    /// The hash a password is checked against: the user's own; for a name without one, the
    /// first user's, so that it takes as long as a known name does with the same kind and
    /// cost of hash (a stand-in of another kind, argon2id against htpasswd's bcrypt cost 5,
    /// took 45 ms against 3 and told them apart). The answer is no whatever it verifies.
    fn hash_to_check<'a>(&'a self, user: Option<&'a User>) -> &'a str {
        user.and_then(|u| u.password.as_deref())
            .or_else(|| self.0.iter().find_map(|u| u.password.as_deref()))
            .unwrap_or(crate::password::NO_USER)
    }

    /// The user `name` logging in with `secret` (a password, or an access token) at `now`.
    /// Every refusal takes as long as a password check: no answer tells a user that exists
    /// from one that does not.
    pub fn authenticate(&self, name: &str, secret: &str, now: u64) -> Result<Principal, Refusal> {
        let user = self.0.iter().find(|u| u.name == name);
        let expired = |until: Option<u64>| until.is_some_and(|t| now >= t);
        if let Some(token) = secret.strip_prefix(TOKEN_PREFIX) {
            let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(
                format!("{TOKEN_PREFIX}{token}").as_bytes(),
            ));
            let found = user.and_then(|u| {
                u.tokens
                    .iter()
                    .find(|t| crate::digest::constant_time_eq(&t.digest, &digest))
                    .map(|t| (u, t))
            });
            let Some((u, t)) = found else {
                return Err(Refusal::Unknown);
            };
            if expired(u.expires) || expired(t.expires) {
                return Err(Refusal::Expired);
            }
            return Ok(Principal {
                user: u.name.clone(),
                admin: false,
                token: Some(t.name.clone()),
                grants: u.access.clone(),
                token_grants: Some(t.access.clone().unwrap_or_else(|| u.access.clone())),
            });
        }
        let hash = self.hash_to_check(user);
        let verified = crate::password::verify(hash, secret.as_bytes());
        let Some(u) = user.filter(|u| verified && u.password.is_some()) else {
            return Err(Refusal::Unknown);
        };
        if expired(u.expires) {
            return Err(Refusal::Expired);
        }
        Ok(Principal {
            user: u.name.clone(),
            admin: u.admin,
            token: None,
            grants: u.access.clone(),
            token_grants: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `htpasswd -nbB alice s3cret`
    const ALICE: &str = "$2y$05$ha5H.1Gr3Cup2kRBdcj.GuJbnsrqMUFVViHZUMOn/79k9jPA70EMi";
    const TOKEN: &str = "srp_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";

    fn users(extra: &str) -> Users {
        let digest = crate::digest::hex(&<sha2::Sha256 as sha2::Digest>::digest(TOKEN.as_bytes()));
        Users::parse(&format!(
            r#"[{{"name": "alice", "password": "{ALICE}", "admin": true,
                 "access": [{{"routes": ["private"], "repositories": ["team/**", "web"]}}],
                 "tokens": [{{"name": "ci", "hash": "sha256:{digest}", "expires": "2030-01-01",
                             "access": [{{"repositories": ["web"]}}]}}]}}{extra}]"#
        ))
        .unwrap()
    }

    #[test]
    fn a_password_logs_in_with_the_user_s_grants() {
        let u = users("");
        let p = u.authenticate("alice", "s3cret", 0).unwrap();
        assert!(p.admin && p.token.is_none());
        assert!(p.may("private", "team/app/x", Action::Pull));
        assert!(!p.may("private", "team/app/x", Action::Push));
        assert!(!p.may("other", "team/app/x", Action::Pull));
        assert!(!p.may("private", "secret", Action::Pull));
        assert_eq!(u.authenticate("alice", "wrong", 0), Err(Refusal::Unknown));
        assert_eq!(u.authenticate("bob", "s3cret", 0), Err(Refusal::Unknown));
    }

    #[test]
    fn an_access_token_narrows_the_user_and_expires() {
        let u = users("");
        let p = u.authenticate("alice", TOKEN, 0).unwrap();
        assert_eq!(p.token.as_deref(), Some("ci"));
        assert!(!p.admin, "a token is never an admin's password");
        assert!(p.may("private", "web", Action::Pull));
        assert!(!p.may("private", "team/app", Action::Pull));
        assert_eq!(
            u.authenticate("alice", TOKEN, 1_893_456_000),
            Err(Refusal::Expired)
        );
        assert_eq!(
            u.authenticate("alice", "srp_other", 0),
            Err(Refusal::Unknown)
        );
        assert_eq!(u.authenticate("bob", TOKEN, 0), Err(Refusal::Unknown));
    }

    #[test]
    fn a_name_no_user_has_costs_what_a_user_s_own_hash_does() {
        let u = users(r#",{"name": "nopass"}"#);
        for name in ["nobody", "nopass"] {
            assert_eq!(u.hash_to_check(u.0.iter().find(|x| x.name == name)), ALICE);
            // alice's password, under a name that is not hers.
            assert_eq!(u.authenticate(name, "s3cret", 0), Err(Refusal::Unknown));
        }
        let none = Users::parse(r#"[{"name": "nopass"}]"#).unwrap();
        assert_eq!(none.hash_to_check(None), crate::password::NO_USER);
    }

    #[test]
    fn an_expired_user_is_refused() {
        let u = users(&format!(
            r#",{{"name": "old", "password": "{ALICE}", "expires": "2020-01-01"}}"#
        ));
        assert_eq!(
            u.authenticate("old", "s3cret", 1_700_000_000),
            Err(Refusal::Expired)
        );
    }

    #[test]
    fn errors_name_the_user_never_a_value() {
        for (json, want) in [
            (r#"{}"#, "not a JSON array"),
            (
                r#"[{"name": "a", "password": "TOKEN99"}]"#,
                "user \"a\": password",
            ),
            (
                r#"[{"name": "a", "expires": "TOKEN99"}]"#,
                "user \"a\": expires",
            ),
            (
                r#"[{"name": "a", "tokens": [{"name": "t", "hash": "TOKEN99"}]}]"#,
                "user \"a\": tokens",
            ),
            (r#"[{"name": "a"}, {"name": "a"}]"#, "second user"),
            (r#"[{"name": "a b"}]"#, "user 1: name"),
            (
                r#"[{"name": "a", "access": [{"repositories": ["TOKEN99"]}]}]"#,
                "not a JSON array",
            ),
        ] {
            let e = Users::parse(json).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
            assert!(!e.contains("TOKEN99"), "{e}");
        }
        assert!(!format!("{:?}", users("")).contains("$2y"));
    }
}
