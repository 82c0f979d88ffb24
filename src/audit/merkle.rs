//! The audit log's Merkle tree: RFC 6962 / RFC 9162 §2.1 hashing, inclusion and consistency
//! proofs, and the compact range an append-only sealer keeps.
//!
//! Auditors recompute roots with their own tools, so nothing here may deviate from the RFC:
//! leaf = SHA-256(0x00 ‖ data), node = SHA-256(0x01 ‖ left ‖ right), the tree over n > 1
//! leaves splits at the largest power of two below n, the empty tree's root is SHA-256("").

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// A SHA-256 tree hash.
pub type Hash = [u8; 32];

/// The hash of a leaf whose content is `data`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(data);
    hasher.finalize().into()
}

/// The hash of an interior node over its two children.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly below `n` (n ≥ 2): where RFC 6962 splits a tree.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The root of the tree over `leaves` (leaf hashes, in log order).
pub fn root(leaves: &[Hash]) -> Hash {
    // Appending is O(n) with O(log n) memory, and the same code the sealer runs.
    let mut range = CompactRange::new();
    for leaf in leaves {
        range.append(*leaf);
    }
    range.root()
}

/// Why a proof was refused (or could not be made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not below the tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("the old tree size {old} is larger than the new tree size {new}")]
    SizesDecrease { old: u64, new: u64 },
    #[error("the proof has {got} hashes, a tree of these sizes needs {expected}")]
    WrongLength { expected: usize, got: usize },
    #[error("the proof leads to root {computed}, not to the expected root {expected}")]
    RootMismatch { computed: String, expected: String },
    #[error("the proof does not lead to the old tree's root {expected} (it gives {computed})")]
    OldRootMismatch { computed: String, expected: String },
    #[error("trees of equal size {size} with different roots: a fork")]
    EqualSizesDifferentRoots { size: u64 },
}

/// Base64 of a hash, as proofs and checkpoints show it.
pub fn encode(hash: &Hash) -> String {
    BASE64.encode(hash)
}

/// A hash from its base64 form.
pub fn decode(text: &str) -> Option<Hash> {
    BASE64.decode(text).ok()?.try_into().ok()
}

/// The RFC 9162 §2.1.3.1 inclusion path of leaf `index` in the tree over `leaves`.
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Result<Vec<Hash>, ProofError> {
    let size = leaves.len() as u64;
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut proof = Vec::new();
    path(leaves, index as usize, &mut proof);
    Ok(proof)
}

/// PATH(m, D[n]), siblings from the leaf up (the recursion appends after descending).
fn path(leaves: &[Hash], m: usize, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n as u64) as usize;
    if m < k {
        path(&leaves[..k], m, out);
        out.push(root(&leaves[k..]));
    } else {
        path(&leaves[k..], m - k, out);
        out.push(root(&leaves[..k]));
    }
}

/// The number of hashes an inclusion proof of `index` in a tree of `size` has.
fn inclusion_length(index: u64, size: u64) -> usize {
    // Levels where the path runs beside a full sibling, plus the right border's merges.
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = (index >> inner).count_ones();
    (inner + border) as usize
}

/// Checks that `leaf` is at `index` in the tree of `size` whose root is `root` (RFC 9162
/// §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let expected = inclusion_length(index, size);
    if proof.len() != expected {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            // On the right border: climb past the levels where this node has no sibling.
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if r != *root {
        return Err(ProofError::RootMismatch {
            computed: encode(&r),
            expected: encode(root),
        });
    }
    Ok(())
}

/// The RFC 9162 §2.1.4.1 consistency proof between the first `old_size` leaves and the first
/// `new_size` leaves of `leaves`.
pub fn consistency_proof(leaves: &[Hash], old_size: u64, new_size: u64) -> Result<Vec<Hash>, ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesDecrease {
            old: old_size,
            new: new_size,
        });
    }
    if new_size > leaves.len() as u64 {
        return Err(ProofError::IndexOutOfRange {
            index: new_size - 1,
            size: leaves.len() as u64,
        });
    }
    let mut proof = Vec::new();
    if old_size > 0 && old_size < new_size {
        subproof(old_size as usize, &leaves[..new_size as usize], true, &mut proof);
    }
    Ok(proof)
}

/// SUBPROOF(m, D[n], b).
fn subproof(m: usize, leaves: &[Hash], whole: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !whole {
            out.push(root(leaves));
        }
        return;
    }
    let k = split(n as u64) as usize;
    if m <= k {
        subproof(m, &leaves[..k], whole, out);
        out.push(root(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, out);
        out.push(root(&leaves[..k]));
    }
}

/// Checks that the tree of `new_size` with root `new_root` extends the tree of `old_size`
/// with root `old_root` (RFC 9162 §2.1.4.2): the log was only appended to.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesDecrease {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == new_size || old_size == 0 {
        // Nothing to prove: equal trees must be the same tree, and every tree extends the
        // empty one (whose root is fixed).
        if !proof.is_empty() {
            return Err(ProofError::WrongLength {
                expected: 0,
                got: proof.len(),
            });
        }
        if old_size == 0 {
            let empty = empty_root();
            return match *old_root == empty {
                true => Ok(()),
                false => Err(ProofError::OldRootMismatch {
                    computed: encode(&empty),
                    expected: encode(old_root),
                }),
            };
        }
        return match old_root == new_root {
            true => Ok(()),
            false => Err(ProofError::EqualSizesDifferentRoots { size: old_size }),
        };
    }
    // The path starts with the old root itself when the old tree is a perfect subtree.
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let expected = consistency_length(old_size, new_size);
    if proof.len() != expected {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch {
            computed: encode(&fr),
            expected: encode(old_root),
        });
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch {
            computed: encode(&sr),
            expected: encode(new_root),
        });
    }
    Ok(())
}

/// The number of hashes a consistency proof between 0 < old < new has.
fn consistency_length(old: u64, new: u64) -> usize {
    // As an inclusion proof of leaf old-1 in the new tree, less the levels the old tree's
    // perfect right part covers, plus that part's root unless the old tree is perfect.
    let shift = (old).trailing_zeros();
    let inner = 64 - (((old - 1) ^ (new - 1)) >> shift).leading_zeros();
    let border = ((old - 1) >> shift >> inner).count_ones();
    let start = usize::from(!old.is_power_of_two());
    start + (inner + border) as usize
}

/// The perfect-subtree roots of an append-only log, left to right: all a sealer needs to
/// append leaves and compute the root, O(log n) hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactRange {
    pub size: u64,
    /// One root per set bit of `size`, largest subtree first.
    pub hashes: Vec<Hash>,
}

/// Why a stored compact range could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompactRangeError {
    #[error("compact range: the size is not a decimal number")]
    Size,
    #[error("compact range: hash {0} is not 32 bytes of base64")]
    Hash(usize),
    #[error("compact range: size {size} needs {expected} hashes, found {got}")]
    Count { size: u64, expected: usize, got: usize },
}

impl CompactRange {
    /// The empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the leaf with hash `leaf`.
    pub fn append(&mut self, leaf: Hash) {
        // Each trailing one bit of the old size is a perfect subtree of the same height as
        // the one being carried: merge them, as binary addition carries.
        let mut carry = leaf;
        let mut size = self.size;
        while size & 1 == 1 {
            let left = self.hashes.pop().expect("one hash per set bit of size");
            carry = node_hash(&left, &carry);
            size >>= 1;
        }
        self.hashes.push(carry);
        self.size += 1;
    }

    /// The root of the tree over every leaf appended so far.
    pub fn root(&self) -> Hash {
        let mut hashes = self.hashes.iter().rev();
        let Some(last) = hashes.next() else {
            return empty_root();
        };
        hashes.fold(*last, |right, left| node_hash(left, &right))
    }

    /// Reads back [`CompactRange`]'s `Display` form: the size, then each hash in base64,
    /// separated by single spaces (`"5 <b64> <b64>"`; `"0"` for the empty log).
    pub fn parse(text: &str) -> Result<Self, CompactRangeError> {
        let mut parts = text.trim().split(' ');
        let size_text = parts.next().unwrap_or_default();
        if size_text.is_empty() || !size_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CompactRangeError::Size);
        }
        let size: u64 = size_text.parse().map_err(|_| CompactRangeError::Size)?;
        let hashes = parts
            .enumerate()
            .map(|(i, part)| decode(part).ok_or(CompactRangeError::Hash(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let expected = size.count_ones() as usize;
        if hashes.len() != expected {
            return Err(CompactRangeError::Count {
                size,
                expected,
                got: hashes.len(),
            });
        }
        Ok(Self { size, hashes })
    }
}

impl std::fmt::Display for CompactRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.size)?;
        for hash in &self.hashes {
            write!(f, " {}", encode(hash))?;
        }
        Ok(())
    }
}

impl std::str::FromStr for CompactRange {
    type Err = CompactRangeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Hash {
        let bytes: Vec<u8> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect();
        bytes.try_into().unwrap()
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    // Test vectors of transparency-dev/merkle (testonly/constants.go and cmd/proofgen/main.go),
    // the ones certificate-transparency-go and Trillian used before them.
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    const LEAF_HASHES: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ];

    fn leaves() -> Vec<Hash> {
        LEAVES.iter().map(|l| leaf_hash(&unhex(l))).collect()
    }

    /// (leaf index, tree size, path): proofgen's inclusion vectors, whose indexes are 1-based.
    fn inclusion_vectors() -> Vec<(u64, u64, Vec<&'static str>)> {
        vec![
            (0, 1, vec![]),
            (
                0,
                8,
                vec![
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                vec![
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                vec!["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                vec![
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ]
    }

    fn consistency_vectors() -> Vec<(u64, u64, Vec<&'static str>)> {
        vec![
            (1, 1, vec![]),
            (
                1,
                8,
                vec![
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                vec![
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                vec![
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
            (
                6,
                7,
                vec![
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ]
    }

    #[test]
    fn leaf_hashes_and_roots_match_rfc6962_vectors() {
        let leaves = leaves();
        for (leaf, want) in leaves.iter().zip(LEAF_HASHES) {
            assert_eq!(*leaf, hex(want));
        }
        assert_eq!(
            root(&[]),
            hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        for (size, want) in ROOTS.iter().enumerate() {
            assert_eq!(root(&leaves[..=size]), hex(want), "size {}", size + 1);
        }
    }

    #[test]
    fn inclusion_proofs_match_the_published_paths_and_verify() {
        let leaves = leaves();
        for (index, size, want) in inclusion_vectors() {
            let want: Vec<Hash> = want.into_iter().map(hex).collect();
            let tree = &leaves[..size as usize];
            assert_eq!(inclusion_proof(tree, index).unwrap(), want, "{index}@{size}");
            let root = hex(ROOTS[size as usize - 1]);
            verify_inclusion(&leaves[index as usize], index, size, &want, &root).unwrap();
        }
    }

    #[test]
    fn consistency_proofs_match_the_published_paths_and_verify() {
        let leaves = leaves();
        for (old, new, want) in consistency_vectors() {
            let want: Vec<Hash> = want.into_iter().map(hex).collect();
            assert_eq!(
                consistency_proof(&leaves, old, new).unwrap(),
                want,
                "{old}->{new}"
            );
            let (old_root, new_root) = (hex(ROOTS[old as usize - 1]), hex(ROOTS[new as usize - 1]));
            verify_consistency(old, new, &old_root, &new_root, &want).unwrap();
        }
    }

    #[test]
    fn tampered_proofs_are_refused_with_a_reason() {
        let leaves = leaves();
        let root8 = hex(ROOTS[7]);
        let mut proof = inclusion_proof(&leaves, 5).unwrap();
        assert!(matches!(
            verify_inclusion(&leaves[5], 4, 8, &proof, &root8),
            Err(ProofError::RootMismatch { .. })
        ));
        assert!(matches!(
            verify_inclusion(&leaves[5], 8, 8, &proof, &root8),
            Err(ProofError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            verify_inclusion(&leaves[5], 5, 8, &proof[..2], &root8),
            Err(ProofError::WrongLength { expected: 3, got: 2 })
        ));
        proof[1][0] ^= 1;
        assert!(verify_inclusion(&leaves[5], 5, 8, &proof, &root8).is_err());
        let root6 = hex(ROOTS[5]);
        assert_eq!(
            verify_consistency(6, 6, &root6, &root8, &[]),
            Err(ProofError::EqualSizesDifferentRoots { size: 6 })
        );
        assert!(matches!(
            verify_consistency(8, 6, &root8, &root6, &[]),
            Err(ProofError::SizesDecrease { .. })
        ));
    }

    #[test]
    fn the_compact_range_follows_the_vectors_and_round_trips() {
        let mut range = CompactRange::new();
        assert_eq!(range.root(), empty_root());
        assert_eq!(CompactRange::parse(&range.to_string()).unwrap(), range);
        for (leaf, want) in leaves().into_iter().zip(ROOTS) {
            range.append(leaf);
            assert_eq!(range.root(), hex(want));
            assert_eq!(range.hashes.len(), range.size.count_ones() as usize);
            assert_eq!(CompactRange::parse(&range.to_string()).unwrap(), range);
        }
        // Size 8 is one perfect tree: its root is the only hash.
        assert_eq!(range.hashes, vec![hex(ROOTS[7])]);
        assert!(matches!(
            CompactRange::parse("3 AAAA"),
            Err(CompactRangeError::Hash(0))
        ));
        assert!(matches!(
            CompactRange::parse("3"),
            Err(CompactRangeError::Count { expected: 2, .. })
        ));
    }
}
