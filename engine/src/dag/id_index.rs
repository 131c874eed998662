//! Where each node id is in the document, and each node's rank in id order: the index every
//! compile pass uses instead of looking ids up in maps.

use rustc_hash::FxHashMap;

use super::NodeIndex;
use super::report::{ErrorType, Findings};
use super::spec::NodeSpec;

/// Where each id is, and each node's rank in id order.
pub(super) struct IdIndex<'s> {
    /// Position of each id (its first occurrence when repeated).
    pub(super) position: FxHashMap<&'s str, NodeIndex>,
    /// Rank of each position in ascending id order (a repeated id shares its first rank).
    pub(super) rank: Vec<u32>,
    /// Position of each rank.
    pub(super) by_rank: Vec<NodeIndex>,
}

impl<'s> IdIndex<'s> {
    pub(super) fn new(entries: &'s [(String, NodeSpec)], f: &mut Findings) -> Self {
        // Sorting on a 16-byte prefix keeps most comparisons inside one contiguous array.
        let mut keyed: Vec<(u128, u32)> = (0..).zip(entries).map(|(p, (id, _))| (prefix(id), p)).collect();
        let full = |a: u32, b: u32| entries[a as usize].0.cmp(&entries[b as usize].0);
        // Ties on the id are broken by position, so the first occurrence of a repeated id ranks first.
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| full(a.1, b.1)).then(a.1.cmp(&b.1)));
        let mut rank = vec![0u32; entries.len()];
        let mut by_rank = Vec::with_capacity(entries.len());
        let mut position = FxHashMap::with_capacity_and_hasher(entries.len(), Default::default());
        let mut i = 0;
        while i < keyed.len() {
            let first = keyed[i];
            let same = keyed[i..].iter().take_while(|k| k.0 == first.0 && full(k.1, first.1).is_eq()).count();
            let id = entries[first.1 as usize].0.as_str();
            if same > 1 {
                let msg = format!("node id {id:?} appears {same} times; ids must be unique");
                f.error(ErrorType::DuplicateNodeId, &[id], msg);
            }
            for k in &keyed[i..i + same] {
                rank[k.1 as usize] = by_rank.len() as u32;
            }
            position.insert(id, first.1);
            by_rank.push(first.1);
            i += same;
        }
        Self { position, rank, by_rank }
    }
}

/// The first 16 bytes of `id`, zero-padded, as a big-endian number: comparing two prefixes orders
/// the ids by their first 16 bytes; only equal prefixes need the whole strings.
fn prefix(id: &str) -> u128 {
    let mut bytes = [0u8; 16];
    let n = id.len().min(16);
    bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
    u128::from_be_bytes(bytes)
}
