//! Users' password hashes: argon2id PHC strings (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`, what
//! `tests/users` makes) and bcrypt (`$2y$…`, what `htpasswd -B` writes). The proxy keeps no
//! password, only verifies one against its hash; the libraries compare in constant time.

use argon2::password_hash::{PasswordHash, PasswordVerifier};

/// Whether `hash` is a hash this proxy can verify against.
pub fn is_supported(hash: &str) -> bool {
    if hash.starts_with("$argon2") {
        return PasswordHash::new(hash).is_ok();
    }
    is_bcrypt(hash) && hash.len() == 60
}

fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2x$", "$2y$"]
        .iter()
        .any(|p| hash.starts_with(p))
}

/// Whether `password` is the one `hash` was made from.
pub fn verify(hash: &str, password: &[u8]) -> bool {
    if hash.starts_with("$argon2") {
        return PasswordHash::new(hash).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(password, &h)
                .is_ok()
        });
    }
    is_bcrypt(hash) && bcrypt::verify(password, hash).unwrap_or(false)
}

/// An argon2id hash of `password` (OWASP's parameters: 19 MiB, 2 passes, 1 lane) with `salt`
/// (16 random bytes or more): what `tests/users` writes into the `users` variable.
pub fn hash(password: &[u8], salt: &[u8]) -> Option<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(salt).ok()?;
    let params = argon2::Params::new(19 * 1024, 2, 1, None).ok()?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    Some(a.hash_password(password, &salt).ok()?.to_string())
}

/// A hash that matches nothing, verified for a name no user has: an unknown name then costs
/// what a known one does, and answers as slowly.
pub const NO_USER: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$bm8tdXNlci1zYWx0LTAw$0Kq8ne3hXWWy5cMXHnr1wzzGN/TxlKlCOtcS1gCzwjY";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_hashes_verify_their_password_only() {
        let h = hash(b"s3cret", b"0123456789abcdef").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(is_supported(&h));
        assert!(verify(&h, b"s3cret"));
        assert!(!verify(&h, b"s3cret "));
        assert!(!verify(NO_USER, b"s3cret") && is_supported(NO_USER));
    }

    #[test]
    fn htpasswd_bcrypt_hashes_verify() {
        // `htpasswd -nbB alice s3cret` (apache2-utils), cost 5.
        let h = "$2y$05$ha5H.1Gr3Cup2kRBdcj.GuJbnsrqMUFVViHZUMOn/79k9jPA70EMi";
        assert!(is_supported(h));
        assert!(verify(h, b"s3cret"));
        assert!(!verify(h, b"wrong"));
        assert!(!is_supported("s3cret") && !verify("s3cret", b"s3cret"));
        assert!(!is_supported("$2y$05$short"));
    }
}
