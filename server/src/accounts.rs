//! Users, their passwords and their secrets, apart from where they are stored (`db::users`,
//! `db::api_tokens`, `db::sessions`) and how a request proves one (`http::auth`).
//!
//! - Passwords are hashed with argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes, one
//!   lane, OWASP's minimum) under a random salt, and stored as PHC strings. Each guess costs
//!   the server one such hash, which is what slows a brute force down.
//! - API tokens and session ids are 256 random bits; only their sha256 is stored.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};

/// The user field that signs in with `--auth-token` as the password (an empty field does too);
/// no user may be called this.
pub const ADMIN: &str = "admin";

/// The shortest password `goodhart user add` accepts.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// An argon2id PHC string of `password` under a fresh random salt.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| anyhow::anyhow!("encoding a salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

/// Whether `password` matches a stored PHC string (false for a string that is not one).
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
}

/// Costs what checking a real user's password costs, for a name that is no user's: the
/// answer's timing then does not tell which names exist.
pub fn verify_nobody(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let phc = DUMMY.get_or_init(|| hash_password("not anyone's password").unwrap_or_default());
    let _ = verify_password(password, phc);
}

/// A new secret: `prefix` and 256 random bits in hex.
pub fn new_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}{}", hex(&bytes))
}

/// What is stored of a secret: its sha256, in hex.
pub fn sha256_hex(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why `name` cannot be a user's name, if it cannot: 1 to 64 letters, digits, `.`, `_` or `-`,
/// and not [`ADMIN`].
pub fn name_problem(name: &str) -> Option<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 64 || !name.chars().all(allowed) {
        Some(format!("{name:?} is not a user name: use 1 to 64 letters, digits, '.', '_' or '-'"))
    } else if name.eq_ignore_ascii_case(ADMIN) {
        Some(format!("{ADMIN:?} is reserved: it signs in with the server's --auth-token"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_own_hash_only_and_each_hash_has_its_own_salt() {
        let a = hash_password("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$v=19$"), "{a}");
        assert!(verify_password("correct horse", &a));
        assert!(!verify_password("correct hose", &a));
        assert!(!verify_password("correct horse", "not a phc string"));
        assert_ne!(hash_password("correct horse").unwrap(), a, "a fresh salt each time");
    }

    #[test]
    fn secrets_are_random_and_stored_as_their_sha256() {
        let (a, b) = (new_secret("gdh_"), new_secret("gdh_"));
        assert!(a.starts_with("gdh_") && a.len() == 4 + 64 && a != b);
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn user_names_are_short_plain_words_and_admin_is_reserved() {
        for ok in ["alice", "bob.smith", "gpu_team-2"] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        for bad in ["", "with space", "ümlaut", "a/b", &"x".repeat(65), "admin", "Admin"] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
    }
}
