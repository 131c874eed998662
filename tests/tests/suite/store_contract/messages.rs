//! The contract of `MessageStore`: results recorded once, outbox claims, wake-ups after commit.

// The contract's fixtures and imports.
use super::*;

pub(super) async fn results_are_recorded_once(db: &dyn Store) {
    let id = chain_execution(db, "inbox").await;
    assert_eq!(db.inbox(id).await.expect("inbox"), (vec![], false));
    // Attempt 3 of a and attempt 2 of b were dispatched: results name those or earlier attempts.
    let owned = claim_one(db, "replica-a", TTL, id).await;
    let dispatch = StepWrite {
        status: ExecutionStatus::Running,
        nodes: vec![running("a", 3), running("b", 2)],
        ..Default::default()
    };
    assert!(db.commit_step("replica-a", owned, &dispatch).await.expect("step"));
    // One batch shares its arrival time: within it, results come by node and attempt.
    db.record_results(&[result(id, "b", 2), result(id, "a", 1)]).await.expect("record");
    let unknown = result(Uuid::now_v7(), "a", 1);
    let mut garbled = result(id, "a", 9);
    garbled.execution_id = "not-a-uuid".into();
    let never_dispatched = result(id, "b", 3);
    let strays = [result(id, "a", 1), unknown, garbled, never_dispatched, result(id, "a", 3)];
    db.record_results(&strays).await.expect("record again");
    let (inbox, cancel) = db.inbox(id).await.expect("inbox");
    assert!(!cancel);
    assert_eq!(
        inbox,
        [result(id, "a", 1), result(id, "b", 2), result(id, "a", 3)],
        "duplicates, strays and results of attempts never dispatched dropped"
    );
    let attempts = db.attempts(id).await.expect("attempts");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts["a"], [result(id, "a", 1), result(id, "a", 3)], "in attempt order, as received");
    assert_eq!(attempts["b"], [result(id, "b", 2)]);
    assert!(matches!(attempts["b"][0].outcome, Outcome::Succeeded { .. }));

    let idle = chain_execution(db, "idle").await;
    assert_eq!(db.with_pending_inbox(&[id, idle]).await.expect("pending"), [id]);
    let leases = db.claim("replica-a", TTL, 10, 100).await.expect("claim");
    assert_eq!(leases, [Lease { execution_id: idle, epoch: 1 }], "the held execution is not claimed again");
    let held = db.leased_execution(leases[0]).await.expect("read").expect("ours");
    assert_eq!(held.execution_id, idle);
    assert!(db.leased_execution(Lease { execution_id: idle, epoch: 7 }).await.expect("read").is_none());

    let step = StepWrite {
        status: ExecutionStatus::Running,
        processed: vec![processed("a", 1), processed("b", 2)],
        ..StepWrite::default()
    };
    assert!(db.commit_step("replica-a", owned, &step).await.expect("step"));
    assert_eq!(db.inbox(id).await.expect("inbox").0, [result(id, "a", 3)], "processed entries leave the inbox");
    assert_eq!(db.attempts(id).await.expect("attempts")["a"].len(), 2, "the history keeps them");
    let step =
        StepWrite { status: ExecutionStatus::Running, processed: vec![processed("a", 3)], ..StepWrite::default() };
    assert!(db.commit_step("replica-a", owned, &step).await.expect("step"));
    assert!(db.with_pending_inbox(&[id, idle]).await.expect("pending").is_empty());
}

pub(super) async fn outbox_claims_expire(db: &dyn Store) {
    let id = chain_execution(db, "relay").await;
    let lease = claim_one(db, "replica-a", TTL, id).await;
    let step = StepWrite {
        status: ExecutionStatus::Running,
        outbox: vec![message(1), message(2), message(3)],
        ..StepWrite::default()
    };
    assert!(db.commit_step("replica-a", lease, &step).await.expect("step"));

    let first = db.claim_outbox(2, Duration::from_millis(150)).await.expect("claim");
    let sent = |rows: &[coordinator::store::OutboxRow]| {
        rows.iter()
            .map(|r| (r.exchange.clone(), r.routing_key.clone(), r.body.clone(), r.headers.clone()))
            .collect::<Vec<_>>()
    };
    let expected = |ns: &[u8]| {
        ns.iter().map(|&n| message(n)).map(|m| (m.exchange, m.routing_key, m.body, m.headers)).collect::<Vec<_>>()
    };
    assert_eq!(sent(&first), expected(&[1, 2]), "in id order, as written");
    assert!(first[0].id < first[1].id);
    let second = db.claim_outbox(10, TTL).await.expect("claim");
    assert_eq!(sent(&second), expected(&[3]), "claimed rows are not handed out twice");
    assert!(db.claim_outbox(10, TTL).await.expect("claim").is_empty());

    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = db.claim_outbox(10, TTL).await.expect("claim");
    assert_eq!(
        again.iter().map(|r| r.id).collect::<Vec<_>>(),
        first.iter().map(|r| r.id).collect::<Vec<_>>(),
        "expired claims return"
    );
    db.delete_outbox(&[first[0].id]).await.expect("delete");
    assert_eq!(backlog_of(db).await.1, 2);
    db.delete_outbox(&[first[1].id, second[0].id, 999_999]).await.expect("delete");
    assert_eq!(backlog_of(db).await.1, 0);
    db.delete_outbox(&[]).await.expect("deleting nothing is fine");
}

/// The next wake-up's payload, within 5 s.
pub(super) async fn wake(s: &mut Box<dyn Subscription>) -> String {
    tokio::time::timeout(Duration::from_secs(5), s.next()).await.expect("woken in time").expect("payload")
}

pub(super) async fn subscriptions_wake_after_commit(db: &dyn Store) {
    let mut inbox = db.subscribe(Topic::Inbox).await.expect("subscribe");
    let mut outbox = db.subscribe(Topic::Outbox).await.expect("subscribe");
    let id = chain_execution(db, "woken").await;
    let lease = claim_one(db, "replica-a", TTL, id).await;
    let dispatch = StepWrite { status: ExecutionStatus::Running, nodes: vec![running("a", 1)], ..Default::default() };
    assert!(db.commit_step("replica-a", lease, &dispatch).await.expect("step"));
    db.record_results(&[result(id, "a", 1)]).await.expect("record");
    assert_eq!(wake(&mut inbox).await, id.to_string());
    db.request_cancel(TENANT, id).await.expect("cancel");
    assert_eq!(wake(&mut inbox).await, id.to_string());

    let quiet = StepWrite { status: ExecutionStatus::Running, ..StepWrite::default() };
    assert!(db.commit_step("replica-a", lease, &quiet).await.expect("step"));
    let loud = StepWrite { status: ExecutionStatus::Running, outbox: vec![message(1)], ..StepWrite::default() };
    assert!(db.commit_step("replica-a", lease, &loud).await.expect("step"));
    assert_eq!(wake(&mut outbox).await, "", "an outbox wake-up carries no payload");
    let nothing = tokio::time::timeout(Duration::from_millis(300), outbox.next()).await;
    assert!(nothing.is_err(), "one wake-up per step that wrote messages, none for the quiet one");
    let ids: HashSet<Uuid> = db.with_pending_inbox(&[id]).await.expect("pending").into_iter().collect();
    assert_eq!(ids, HashSet::from([id]));
}
