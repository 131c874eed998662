//! Admission: which waiting executions start now.
//!
//! `GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS` bounds started executions across every replica,
//! and a DAG's own `max_concurrent_executions` bounds its executions within that. A store holds
//! the lock that serialises these decisions and reads the slots in use and the waiting line;
//! this module makes the decision, the same one for every store. Waiting executions are taken in
//! submission order: one whose DAG is at its limit is passed over (it keeps its place), so a
//! busy DAG never holds back another DAG's executions behind it.

use std::collections::HashMap;

/// Slots in use for one DAG of one tenant: started executions plus waiting ones that some
/// replica has just claimed and is about to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    pub tenant_id: String,
    pub dag_id: String,
    pub executions: i64,
}

/// One waiting execution, as the line presents it (in submission order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<Id> {
    pub id: Id,
    pub tenant_id: String,
    pub dag_id: String,
    /// The DAG's own `max_concurrent_executions`, if it sets one.
    pub dag_limit: Option<i64>,
}

/// The slots in use, counted per DAG and in all.
#[derive(Debug, Clone, Default)]
pub struct Slots {
    per_dag: HashMap<(String, String), i64>,
    free: i64,
}

impl Slots {
    /// The slots left under `max_concurrent` given what is in use.
    pub fn new(in_use: impl IntoIterator<Item = InUse>, max_concurrent: i64) -> Self {
        let per_dag: HashMap<(String, String), i64> =
            in_use.into_iter().map(|u| ((u.tenant_id, u.dag_id), u.executions)).collect();
        let free = max_concurrent - per_dag.values().sum::<i64>();
        Self { per_dag, free }
    }

    /// Free slots in the whole cluster (never below zero); with none, the waiting line need not
    /// be read at all.
    pub fn free(&self) -> i64 {
        self.free.max(0)
    }

    /// The waiting executions that start now, in submission order: at most `room` (what this
    /// replica can still drive) and at most the free slots, each within its DAG's limit.
    pub fn admit<Id>(&mut self, waiting: impl IntoIterator<Item = Candidate<Id>>, room: i64) -> Vec<Id> {
        let mut chosen = Vec::new();
        for w in waiting {
            if chosen.len() as i64 >= room || self.free <= 0 {
                break;
            }
            let running = self.per_dag.entry((w.tenant_id, w.dag_id)).or_insert(0);
            if w.dag_limit.is_some_and(|limit| *running >= limit) {
                continue;
            }
            *running += 1;
            self.free -= 1;
            chosen.push(w.id);
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(dag: &str, n: i64) -> InUse {
        InUse { tenant_id: "t".into(), dag_id: dag.into(), executions: n }
    }

    fn waiting(id: u32, dag: &str, dag_limit: Option<i64>) -> Candidate<u32> {
        Candidate { id, tenant_id: "t".into(), dag_id: dag.into(), dag_limit }
    }

    #[test]
    fn takes_the_line_in_order_up_to_the_free_slots() {
        let mut slots = Slots::new([used("a", 2)], 4);
        assert_eq!(slots.free(), 2);
        let line = (1..=5).map(|i| waiting(i, "b", None));
        assert_eq!(slots.admit(line, 10), vec![1, 2]);
        assert_eq!(slots.free(), 0);
        assert_eq!(slots.admit([waiting(9, "c", None)], 10), Vec::<u32>::new(), "nothing left");
    }

    #[test]
    fn room_bounds_what_one_replica_takes() {
        let mut slots = Slots::new([], 100);
        assert_eq!(slots.admit((1..=5).map(|i| waiting(i, "a", None)), 3), vec![1, 2, 3]);
        assert_eq!(slots.free(), 97);
    }

    #[test]
    fn a_dag_at_its_limit_is_passed_over_without_holding_back_the_others() {
        let mut slots = Slots::new([used("busy", 1)], 10);
        let line = [waiting(1, "busy", Some(2)), waiting(2, "busy", Some(2)), waiting(3, "other", None)];
        assert_eq!(slots.admit(line, 10), vec![1, 3], "the busy DAG gets one more, then waits");
    }

    #[test]
    fn tenants_are_counted_apart() {
        let mut slots = Slots::new([used("a", 1)], 10);
        let other_tenant = Candidate { id: 7, tenant_id: "u".into(), dag_id: "a".into(), dag_limit: Some(1) };
        assert_eq!(slots.admit([waiting(1, "a", Some(1)), other_tenant], 10), vec![7]);
    }

    #[test]
    fn more_in_use_than_allowed_admits_nothing() {
        // After the limit was lowered: 5 started, 3 allowed.
        let mut slots = Slots::new([used("a", 5)], 3);
        assert_eq!(slots.free(), 0);
        assert!(slots.admit([waiting(1, "b", None)], 10).is_empty());
    }

    mod properties {
        use std::collections::HashMap;

        use proptest::prelude::*;

        use super::super::*;

        fn key(tenant: u8, dag: u8) -> (String, String) {
            (format!("t{tenant}"), format!("d{dag}"))
        }

        proptest! {
            /// Whatever is in use and waiting: never more started than the cluster's limit or
            /// the replica's room, never a DAG over its own limit, always in submission order,
            /// and nobody passed over who could have started.
            #[test]
            fn admission_never_exceeds_a_limit_and_keeps_the_order(
                in_use in proptest::collection::vec((0u8..2, 0u8..3, 0i64..4), 0..6),
                line in proptest::collection::vec((0u8..2, 0u8..3), 0..30),
                dag_limits in proptest::collection::vec(proptest::option::of(0i64..4), 6),
                room in 0i64..12,
                max in 0i64..16,
            ) {
                let limit_of = |tenant: u8, dag: u8| dag_limits[usize::from(tenant) * 3 + usize::from(dag)];
                let mut used: HashMap<(String, String), i64> = HashMap::new();
                for &(t, d, n) in &in_use {
                    *used.entry(key(t, d)).or_insert(0) += n;
                }
                let total_used: i64 = used.values().sum();
                let mut slots = Slots::new(
                    used.iter().map(|((t, d), &n)| InUse { tenant_id: t.clone(), dag_id: d.clone(), executions: n }),
                    max,
                );
                let candidates = line.iter().enumerate().map(|(i, &(t, d))| Candidate {
                    id: i,
                    tenant_id: format!("t{t}"),
                    dag_id: format!("d{d}"),
                    dag_limit: limit_of(t, d),
                });
                let chosen = slots.admit(candidates, room);
                let n = chosen.len() as i64;
                prop_assert!(n <= room);
                prop_assert!(n <= (max - total_used).max(0));
                prop_assert!(chosen.windows(2).all(|w| w[0] < w[1]), "submission order: {chosen:?}");
                let mut after = used.clone();
                for &i in &chosen {
                    let (t, d) = line[i];
                    let count = after.entry(key(t, d)).or_insert(0);
                    if let Some(limit) = limit_of(t, d) {
                        prop_assert!(*count < limit, "DAG over its limit");
                    }
                    *count += 1;
                }
                // Nobody before the last one chosen was passed over unless its DAG was full.
                if let Some(&last) = chosen.last() {
                    let mut seen = used.clone();
                    for (i, &(t, d)) in line.iter().enumerate().take(last + 1) {
                        let count = seen.entry(key(t, d)).or_insert(0);
                        let full = limit_of(t, d).is_some_and(|l| *count >= l);
                        prop_assert_eq!(chosen.contains(&i), !full, "candidate {} wrongly {}", i, if full { "started" } else { "passed over" });
                        if !full {
                            *count += 1;
                        }
                    }
                }
            }
        }
    }
}
