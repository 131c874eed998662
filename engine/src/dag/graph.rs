//! Graph algorithms over node indices. Every loop is iterative, so a 100,000-node chain cannot
//! overflow the stack.
//!
//! Nodes are numbered by position; `rank` gives each node's place in ascending id order, which is
//! what ties are broken on. Edges point from a dependency to its dependent (`children`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// The lexicographically smallest topological order by (priority descending, id ascending), or
/// `None` when the graph has a cycle. Kahn's algorithm with a max-heap ready queue.
pub(crate) fn canonical_order(
    children: &[Vec<u32>],
    in_degree: &[u32],
    priority: &[i32],
    rank: &[u32],
) -> Option<Vec<u32>> {
    let key = |v: u32| (priority[v as usize], Reverse(rank[v as usize]), v);
    let mut remaining = in_degree.to_vec();
    let mut ready: BinaryHeap<(i32, Reverse<u32>, u32)> =
        (0..).zip(&remaining).filter(|(_, d)| **d == 0).map(|(v, _)| key(v)).collect();
    let mut order = Vec::with_capacity(children.len());
    while let Some((_, _, v)) = ready.pop() {
        order.push(v);
        for &c in &children[v as usize] {
            let d = &mut remaining[c as usize];
            *d -= 1;
            if *d == 0 {
                ready.push(key(c));
            }
        }
    }
    (order.len() == children.len()).then_some(order)
}

/// Level of each node (roots are 0; otherwise one more than its deepest dependency) and the
/// nodes of each level in canonical order. `order` must be a topological order.
pub(crate) fn levels(order: &[u32], nodes: &[super::Node]) -> (Vec<u32>, Vec<Vec<u32>>) {
    let mut level_of = vec![0u32; nodes.len()];
    let mut levels: Vec<Vec<u32>> = Vec::new();
    for &v in order {
        let level = nodes[v as usize].deps.iter().map(|&d| level_of[d as usize] + 1).max().unwrap_or(0);
        level_of[v as usize] = level;
        let slot = level as usize;
        if levels.len() <= slot {
            levels.resize_with(slot + 1, Vec::new);
        }
        // `order` is canonical, so each level fills in canonical order too.
        levels[slot].push(v);
    }
    (level_of, levels)
}

/// One cycle per strongly connected component with more than one node, each as the shortest
/// cycle through the component's smallest node (by id), starting there; cycles are listed by
/// their first node. Self-loops must not be in `children` (they are reported separately), and
/// `children` must be sorted by rank.
pub(crate) fn cycles(children: &[Vec<u32>], rank: &[u32]) -> Vec<Vec<u32>> {
    let components = strongly_connected(children);
    let mut component_of = vec![u32::MAX; children.len()];
    for (c, members) in (0..).zip(&components) {
        for &v in members {
            component_of[v as usize] = c;
        }
    }
    let mut found: Vec<Vec<u32>> = components
        .iter()
        .filter(|m| m.len() > 1)
        .filter_map(|members| {
            let start = *members.iter().min_by_key(|&&v| rank[v as usize])?;
            shortest_cycle(children, start, &component_of)
        })
        .collect();
    found.sort_by_key(|cycle| cycle.first().map(|&v| rank[v as usize]));
    found
}

/// Breadth-first search from `start` back to itself, staying inside its component.
fn shortest_cycle(children: &[Vec<u32>], start: u32, component_of: &[u32]) -> Option<Vec<u32>> {
    let component = component_of[start as usize];
    let mut parent = std::collections::HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        let next = children[v as usize].iter().copied().filter(|&c| component_of[c as usize] == component);
        for c in next {
            if c == start {
                let mut path = vec![v];
                while let Some(&p) = parent.get(path.last()?) {
                    path.push(p);
                }
                path.reverse();
                return Some(path);
            }
            if c != start && !parent.contains_key(&c) {
                parent.insert(c, v);
                queue.push_back(c);
            }
        }
    }
    None
}

/// Tarjan's algorithm with an explicit stack.
fn strongly_connected(children: &[Vec<u32>]) -> Vec<Vec<u32>> {
    const UNSEEN: u32 = u32::MAX;
    let n = children.len();
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<u32> = Vec::new();
    let mut components = Vec::new();
    let mut next_index = 0u32;
    // (node, position of the next child to look at)
    let mut work: Vec<(u32, usize)> = Vec::new();
    for root in 0..n as u32 {
        if index[root as usize] != UNSEEN {
            continue;
        }
        work.push((root, 0));
        while let Some(&mut (v, ref mut pos)) = work.last_mut() {
            let vi = v as usize;
            if *pos == 0 && index[vi] == UNSEEN {
                index[vi] = next_index;
                low[vi] = next_index;
                next_index += 1;
                stack.push(v);
                on_stack[vi] = true;
            }
            if let Some(&c) = children[vi].get(*pos) {
                *pos += 1;
                let ci = c as usize;
                if index[ci] == UNSEEN {
                    work.push((c, 0));
                } else if on_stack[ci] {
                    low[vi] = low[vi].min(index[ci]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent as usize] = low[parent as usize].min(low[vi]);
            }
            if low[vi] == index[vi] {
                let mut members = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w as usize] = false;
                    members.push(w);
                    if w == v {
                        break;
                    }
                }
                components.push(members);
            }
        }
    }
    components
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(n: usize, edges: &[(u32, u32)]) -> (Vec<Vec<u32>>, Vec<u32>) {
        let mut children = vec![Vec::new(); n];
        let mut in_degree = vec![0; n];
        for &(a, b) in edges {
            children[a as usize].push(b);
            in_degree[b as usize] += 1;
        }
        (children, in_degree)
    }

    #[test]
    fn order_is_lexicographically_smallest() {
        // a=0, b=1, z=2; b depends on a. Legacy FIFO gave a, z, b; the smallest order is a, b, z.
        let (children, deg) = graph(3, &[(0, 1)]);
        assert_eq!(canonical_order(&children, &deg, &[0, 0, 0], &[0, 1, 2]), Some(vec![0, 1, 2]));
    }

    #[test]
    fn priority_breaks_ties_before_id() {
        let (children, deg) = graph(3, &[]);
        assert_eq!(canonical_order(&children, &deg, &[0, 5, 5], &[0, 1, 2]), Some(vec![1, 2, 0]));
        assert_eq!(canonical_order(&children, &deg, &[0, 5, 5], &[0, 2, 1]), Some(vec![2, 1, 0]), "rank, not position");
    }

    #[test]
    fn cycles_are_found_in_every_component() {
        // 0 <-> 1, and 2 -> 3 -> 4 -> 2, and 5 alone.
        let (children, deg) = graph(6, &[(0, 1), (1, 0), (2, 3), (3, 4), (4, 2)]);
        let rank = [0, 1, 2, 3, 4, 5];
        assert_eq!(canonical_order(&children, &deg, &[0; 6], &rank), None);
        assert_eq!(cycles(&children, &rank), vec![vec![0, 1], vec![2, 3, 4]]);
    }

    #[test]
    fn long_chain_does_not_recurse() {
        let n = 200_000u32;
        let edges: Vec<(u32, u32)> = (1..n).map(|i| (i - 1, i)).chain([(n - 1, 0)]).collect();
        let (children, _) = graph(n as usize, &edges);
        let rank: Vec<u32> = (0..n).collect();
        let found = cycles(&children, &rank);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].len(), n as usize);
    }
}
