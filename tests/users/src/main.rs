//! Makes what the `users` variable holds, so that no operator writes a hash by hand:
//!
//!     cargo run -q --manifest-path tests/users/Cargo.toml -- hash      # password on stdin
//!     cargo run -q --manifest-path tests/users/Cargo.toml -- token     # a new access token
//!
//! `hash` prints an argon2id PHC string (`"password"` of a user); `token` prints a new access
//! token (give it to the user: it is their password with `docker login`) and the line for the
//! user's `tokens` (its SHA-256 digest: the token itself is kept nowhere).

use std::io::{BufRead, Read};

const USAGE: &str = "usage: spin-registry-users hash   (reads the password from stdin)
       spin-registry-users token  (prints a new access token and its hash)";

fn random(n: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn main() {
    let result = match std::env::args().nth(1).as_deref() {
        Some("hash") => hash(),
        Some("token") => token(),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("spin-registry-users: {e}");
        std::process::exit(1);
    }
}

fn hash() -> std::io::Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("spin-registry-users: give the password on stdin");
        std::process::exit(2);
    }
    let salt = random(16)?;
    match spin_registry_proxy::password::hash(password.as_bytes(), &salt) {
        Some(h) => println!("{h}"),
        None => eprintln!("spin-registry-users: could not hash"),
    }
    Ok(())
}

fn token() -> std::io::Result<()> {
    let token = format!(
        "{}{}",
        spin_registry_proxy::users::TOKEN_PREFIX,
        spin_registry_proxy::base64::encode_url(&random(32)?)
    );
    let digest = spin_registry_proxy::digest::hex(&<sha2::Sha256 as sha2::Digest>::digest(
        token.as_bytes(),
    ));
    println!("token: {token}");
    println!("hash:  sha256:{digest}");
    Ok(())
}
