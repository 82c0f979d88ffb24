//! C2SP signed notes (c2sp.org/signed-note) with Ed25519 keys, as `golang.org/x/mod/sumdb/note`
//! writes and reads them.
//!
//! A note is a text body ending in a newline, a blank line, then signature lines
//! `— <key name> <base64(key id ‖ signature)>`. The key id is the first 4 bytes of
//! SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key), so a verifier picks its signature out of several.
//! Keys are written as `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 ‖ seed)>` and
//! `<name>+<hex id>+<base64(0x01 ‖ public key)>`.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, Verifier as _};
use sha2::{Digest, Sha256};

/// The algorithm byte of Ed25519 in key encodings.
const ALG_ED25519: u8 = 0x01;
/// What every signature line starts with: an em dash (U+2014) and a space.
const SIG_PREFIX: &str = "\u{2014} ";
/// The Go reference refuses notes with more signatures; so do we, to bound the work.
const MAX_SIGNATURES: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("invalid key name {0:?}: it must be non-empty, without spaces or '+'")]
    Name(String),
    #[error("malformed private key (expected PRIVATE+KEY+<name>+<hex id>+<base64 key>)")]
    PrivateKey,
    #[error("malformed verifier key {0:?} (expected <name>+<hex id>+<base64 key>)")]
    VerifierKey(String),
    #[error("the key id {stated:08x} does not match the key (its id is {actual:08x})")]
    KeyId { stated: u32, actual: u32 },
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("the signature of {name}+{id:08x} does not verify: the note was altered or forged")]
    BadSignature { name: String, id: u32 },
    #[error("no signature by {name}+{id:08x} (signed by: {others})")]
    NotSigned { name: String, id: u32, others: String },
    #[error("cannot generate a key: {0}")]
    Random(String),
}

/// Whether `name` may name a key: non-empty, no white space, no '+'.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(char::is_whitespace) && !name.contains('+')
}

/// The key id of Ed25519 public key `public` under `name`.
pub fn key_id(name: &str, public: &[u8; 32]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', ALG_ED25519]);
    hasher.update(public);
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Parses an 8-digit lowercase or uppercase hex key id, exactly as written.
fn parse_id(text: &str) -> Option<u32> {
    (text.len() == 8 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(text, 16).ok())
        .flatten()
}

/// `0x01 ‖ 32 bytes` from base64.
fn parse_key_bytes(text: &str) -> Option<[u8; 32]> {
    let bytes = BASE64.decode(text).ok()?;
    match bytes.split_first() {
        Some((&ALG_ED25519, key)) => key.try_into().ok(),
        _ => None,
    }
}

fn encode_key_bytes(key: &[u8; 32]) -> String {
    let mut bytes = Vec::with_capacity(33);
    bytes.push(ALG_ED25519);
    bytes.extend_from_slice(key);
    BASE64.encode(bytes)
}

/// An Ed25519 signing key with its name. Its `Debug` shows the name and id only.
#[derive(Clone)]
pub struct SigningKey {
    name: String,
    id: u32,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field("id", &format_args!("{:08x}", self.id))
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a private key (`PRIVATE+KEY+<name>+<hex id>+<base64>`); surrounding white space,
    /// such as a key file's final newline, is ignored. Errors never include the key.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::PrivateKey)?;
        // The base64 key may itself hold '+': it is everything after the id.
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::PrivateKey);
        };
        if !valid_name(name) {
            return Err(NoteError::Name(name.to_string()));
        }
        let stated = parse_id(id).ok_or(NoteError::PrivateKey)?;
        let seed = parse_key_bytes(key).ok_or(NoteError::PrivateKey)?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let actual = key_id(name, key.verifying_key().as_bytes());
        if stated != actual {
            return Err(NoteError::KeyId { stated, actual });
        }
        Ok(Self {
            name: name.to_string(),
            id: actual,
            key,
        })
    }

    /// A new random key named `name`, with its private text (for the key file) and its
    /// verifier key text (for auditors).
    pub fn generate(name: &str) -> Result<(Self, String, String), NoteError> {
        use rand::TryRngCore as _;
        if !valid_name(name) {
            return Err(NoteError::Name(name.to_string()));
        }
        let mut seed = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut seed)
            .map_err(|e| NoteError::Random(e.to_string()))?;
        let key = Self::from_seed(name, &seed)?;
        let private = key.private_text();
        let verifier = key.verifier().to_string();
        Ok((key, private, verifier))
    }

    /// The key of Ed25519 `seed` under `name`.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::Name(name.to_string()));
        }
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        Ok(Self {
            name: name.to_string(),
            id: key_id(name, key.verifying_key().as_bytes()),
            key,
        })
    }

    /// The private key file's content (no newline).
    pub fn private_text(&self) -> String {
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.id,
            encode_key_bytes(self.key.as_bytes())
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// The matching verifier key.
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }
}

/// An Ed25519 public key with its name; `Display` writes the verifier key text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    id: u32,
    key: ed25519_dalek::VerifyingKey,
}

impl VerifierKey {
    /// Reads `<name>+<hex id>+<base64(0x01 ‖ public key)>` (surrounding white space ignored).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let text = text.trim();
        let malformed = || NoteError::VerifierKey(text.to_string());
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed());
        };
        if !valid_name(name) {
            return Err(NoteError::Name(name.to_string()));
        }
        let stated = parse_id(id).ok_or_else(malformed)?;
        let public = parse_key_bytes(key).ok_or_else(malformed)?;
        let actual = key_id(name, &public);
        if stated != actual {
            return Err(NoteError::KeyId { stated, actual });
        }
        let key = ed25519_dalek::VerifyingKey::from_bytes(&public).map_err(|_| malformed())?;
        Ok(Self {
            name: name.to_string(),
            id: actual,
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> u32 {
        self.id
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.id,
            encode_key_bytes(self.key.as_bytes())
        )
    }
}

/// Whether `text` holds only characters a note may: no control characters but newline.
fn clean(text: &str) -> bool {
    !text.chars().any(|c| c < '\u{20}' && c != '\n')
}

/// Signs `body` (which must end in a newline and hold no blank line) with `key`: the whole
/// note, body, blank line and signature line.
pub fn sign(body: &str, key: &SigningKey) -> Result<String, NoteError> {
    if !body.ends_with('\n') {
        return Err(NoteError::Malformed("the body does not end in a newline"));
    }
    if body.contains("\n\n") || body.starts_with('\n') || !clean(body) {
        return Err(NoteError::Malformed(
            "the body holds a blank line or a control character",
        ));
    }
    let signature = key.key.sign(body.as_bytes());
    let mut bytes = Vec::with_capacity(68);
    bytes.extend_from_slice(&key.id.to_be_bytes());
    bytes.extend_from_slice(&signature.to_bytes());
    Ok(format!(
        "{body}\n{SIG_PREFIX}{} {}\n",
        key.name,
        BASE64.encode(bytes)
    ))
}

/// The body of `note` without verifying anything (to read what a note claims before the key
/// is at hand); `None` when it is not shaped like a note.
pub fn body_unverified(note: &str) -> Option<&str> {
    note.rfind("\n\n").map(|split| &note[..=split])
}

/// Verifies `note` against `key` and returns its body. As the spec says, signatures by other
/// keys are ignored; a signature by `key` that does not verify rejects the note, and so does a
/// note without one.
pub fn open<'a>(note: &'a str, key: &VerifierKey) -> Result<&'a str, NoteError> {
    if !clean(note) {
        return Err(NoteError::Malformed("a control character"));
    }
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let (body, signatures) = (&note[..=split], &note[split + 2..]);
    if signatures.is_empty() || !signatures.ends_with('\n') {
        return Err(NoteError::Malformed("the signatures do not end in a newline"));
    }
    let mut verified = false;
    let mut others = Vec::new();
    for (n, line) in signatures.lines().enumerate() {
        if n >= MAX_SIGNATURES {
            return Err(NoteError::Malformed("too many signatures"));
        }
        let line = line
            .strip_prefix(SIG_PREFIX)
            .ok_or(NoteError::Malformed("a signature line does not start with '— '"))?;
        let (name, encoded) = line.split_once(' ').unwrap_or((line, ""));
        let bytes = BASE64
            .decode(encoded)
            .map_err(|_| NoteError::Malformed("a signature is not base64"))?;
        if !valid_name(name) || bytes.len() < 5 {
            return Err(NoteError::Malformed("a signature line is malformed"));
        }
        let id = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if name != key.name || id != key.id {
            others.push(format!("{name}+{id:08x}"));
            continue;
        }
        let bad = || NoteError::BadSignature {
            name: name.to_string(),
            id,
        };
        let signature = ed25519_dalek::Signature::from_slice(&bytes[4..]).map_err(|_| bad())?;
        key.key.verify(body.as_bytes(), &signature).map_err(|_| bad())?;
        verified = true;
    }
    if !verified {
        return Err(NoteError::NotSigned {
            name: key.name.clone(),
            id: key.id,
            others: if others.is_empty() {
                "nobody".into()
            } else {
                others.join(", ")
            },
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    // golang.org/x/mod/sumdb/note's note_test.go.
    const PETER_PRIVATE: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const ENOCH: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    #[test]
    fn the_go_reference_keys_parse_and_match() {
        let private = SigningKey::parse(PETER_PRIVATE).unwrap();
        assert_eq!((private.name(), private.id()), ("PeterNeumann", 0xc74f20a3));
        assert_eq!(private.verifier().to_string(), PETER);
        assert_eq!(private.private_text(), PETER_PRIVATE);
        assert_eq!(VerifierKey::parse(PETER).unwrap(), private.verifier());
        VerifierKey::parse(ENOCH).unwrap();
    }

    #[test]
    fn manglings_of_the_reference_keys_are_refused() {
        for key in [PETER, PETER_PRIVATE] {
            let parse = |text: &str| match key == PETER {
                true => VerifierKey::parse(text).is_ok(),
                false => SigningKey::parse(text).is_ok(),
            };
            let bytes = key.as_bytes();
            for i in 0..bytes.len() {
                for j in i + 1..=bytes.len() {
                    if (i, j) != (0, bytes.len()) {
                        assert!(!parse(&key[i..j]), "{}", &key[i..j]);
                    }
                }
                let mut mangled = bytes.to_vec();
                mangled[i] += 1;
                let mangled = String::from_utf8(mangled).unwrap();
                assert!(!parse(&mangled), "{mangled}");
            }
        }
        // Go's: a wrong-length key and an unknown algorithm, both with adjusted key ids.
        assert!(VerifierKey::parse(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        )
        .is_err());
        assert!(
            VerifierKey::parse("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").is_err()
        );
    }

    #[test]
    fn signing_reproduces_the_go_reference_note() {
        let key = SigningKey::parse(PETER_PRIVATE).unwrap();
        assert_eq!(sign(TEXT, &key).unwrap(), format!("{TEXT}\n{PETER_SIG}"));
        assert!(sign("abc", &key).is_err());
    }

    #[test]
    fn opening_ignores_unknown_keys_and_refuses_bad_signatures() {
        let peter = VerifierKey::parse(PETER).unwrap();
        let enoch = VerifierKey::parse(ENOCH).unwrap();
        let both = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
        assert_eq!(open(&both, &peter).unwrap(), TEXT);
        assert_eq!(open(&both, &enoch).unwrap(), TEXT);
        let only_enoch = format!("{TEXT}\n{ENOCH_SIG}");
        assert!(matches!(
            open(&only_enoch, &peter),
            Err(NoteError::NotSigned { .. })
        ));
        let altered = both.replace("answer", "Answer");
        assert!(matches!(
            open(&altered, &peter),
            Err(NoteError::BadSignature { .. })
        ));
        assert!(open(TEXT, &peter).is_err());
    }

    #[test]
    fn generated_keys_sign_and_verify_and_hide_the_secret() {
        let (key, private, verifier) = SigningKey::generate("audit.example/log").unwrap();
        assert_eq!(SigningKey::parse(&private).unwrap().verifier(), key.verifier());
        let verifier = VerifierKey::parse(&verifier).unwrap();
        let note = sign("hello\n", &key).unwrap();
        assert_eq!(open(&note, &verifier).unwrap(), "hello\n");
        // `PRIVATE+KEY+<name>+<id>+<base64>`: the base64 may hold `+` itself.
        let secret = private.splitn(5, '+').nth(4).unwrap();
        assert!(secret.len() >= 44, "{private}");
        assert!(!format!("{key:?}").contains(secret));
        assert!(SigningKey::generate("a b").is_err());
        assert!(SigningKey::generate("a+b").is_err());
        assert!(SigningKey::generate("").is_err());
    }
}
