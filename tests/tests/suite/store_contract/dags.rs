//! The contract of `DagStore`: stored DAGs, revisions, pinned definitions.

// The contract's fixtures and imports.
use super::*;

pub(super) async fn dags_round_trip(db: &dyn Store) {
    let alpha = chain("alpha", "noop");
    let row = db.insert_dag(TENANT, &alpha).await.expect("insert");
    assert_eq!((row.dag_id.as_str(), row.revision), ("alpha", 1));
    assert_eq!(row.dag_hash, alpha.hash().to_string());
    assert_eq!(row.created_at, row.updated_at, "a new DAG was updated when it was created");
    match db.insert_dag(TENANT, &alpha).await {
        Err(StoreError::Conflict(what)) => assert_eq!(what, "DAG alpha"),
        other => panic!("a duplicate id is a conflict, got {other:?}"),
    }
    db.insert_dag("tenant-2", &alpha).await.expect("the same id in another tenant is free");

    let got = db.get_dag(TENANT, "alpha").await.expect("get").expect("stored");
    assert_eq!(got.definition, row.definition);
    assert_eq!(got.definition["nodes"]["b"]["depends_on"], json!(["a"]));
    assert_eq!((got.revision, got.created_at, got.updated_at), (1, row.created_at, row.updated_at));
    assert!(db.get_dag(TENANT, "missing").await.expect("get").is_none());
    assert!(db.get_dag("tenant-3", "alpha").await.expect("get").is_none(), "DAGs are per tenant");
    assert_eq!(db.definition(alpha.hash().as_str()).await.expect("definition"), Some(row.definition.clone()));

    for id in ["gamma", "beta", "Zeta", "delta-1"] {
        db.insert_dag(TENANT, &chain(id, "noop")).await.expect("insert");
    }
    let ids = |rows: Vec<coordinator::store::DagSummary>| rows.into_iter().map(|r| r.dag_id).collect::<Vec<_>>();
    let first = db.list_dags(TENANT, None, 3).await.expect("list");
    assert_eq!((first[0].name.as_str(), first[0].version.as_str(), first[0].node_count), ("Zeta name", "2.1.0", 2));
    assert_eq!(ids(first), ["Zeta", "alpha", "beta"], "by id, byte order");
    assert_eq!(ids(db.list_dags(TENANT, Some("beta"), 3).await.expect("list")), ["delta-1", "gamma"]);
    assert!(db.list_dags(TENANT, Some("gamma"), 3).await.expect("list").is_empty());

    assert!(db.delete_dag(TENANT, "alpha").await.expect("delete"));
    assert!(!db.delete_dag(TENANT, "alpha").await.expect("delete"), "already gone");
    assert!(db.get_dag(TENANT, "alpha").await.expect("get").is_none());
    assert!(db.get_dag("tenant-2", "alpha").await.expect("get").is_some(), "another tenant's DAG stays");
    assert!(db.definition(alpha.hash().as_str()).await.expect("definition").is_some(), "definitions stay");
}

pub(super) async fn dag_updates_compare_revisions(db: &dyn Store) {
    let v1 = chain("edited", "noop");
    let v2 = chain("edited", "sleep");
    let v3 = chain("edited", "echo");
    db.insert_dag(TENANT, &v1).await.expect("insert");
    let UpdateOutcome::Updated(row) = db.update_dag(TENANT, &v2, Some(1)).await.expect("update") else {
        panic!("revision 1 is current")
    };
    assert_eq!((row.revision, row.dag_hash.clone()), (2, v2.hash().to_string()));
    assert!(row.updated_at >= row.created_at);
    assert!(matches!(db.update_dag(TENANT, &v3, Some(1)).await.expect("update"), UpdateOutcome::RevisionMismatch(2)));
    assert_eq!(db.get_dag(TENANT, "edited").await.expect("get").expect("stored").dag_hash, v2.hash().to_string());
    let UpdateOutcome::Updated(row) = db.update_dag(TENANT, &v3, None).await.expect("update") else {
        panic!("no expected revision: unconditional")
    };
    assert_eq!(row.revision, 3);
    let stored = db.get_dag(TENANT, "edited").await.expect("get").expect("stored");
    assert_eq!((stored.revision, stored.dag_hash), (3, v3.hash().to_string()));
    assert_eq!(stored.definition["nodes"]["a"]["agent_id"], "echo");

    let unknown = chain("never-stored", "noop");
    assert!(matches!(db.update_dag(TENANT, &unknown, None).await.expect("update"), UpdateOutcome::NotFound));
    assert!(matches!(db.update_dag(TENANT, &unknown, Some(1)).await.expect("update"), UpdateOutcome::NotFound));
    assert!(db.get_dag(TENANT, "never-stored").await.expect("get").is_none(), "an update creates nothing");
}

pub(super) async fn a_changed_dag_is_not_pinned(db: &dyn Store) {
    let v1 = chain("moving", "noop");
    let v2 = chain("moving", "echo");
    db.insert_dag(TENANT, &v1).await.expect("insert");
    db.update_dag(TENANT, &v2, None).await.expect("update");
    assert_eq!(submit(db, "moving", &v1, Some(("k", "b"))).await.expect("create"), Created::DagChanged);
    assert!(db.status_counts().await.expect("counts").is_empty(), "nothing was written");
    let Created::New(id) = submit(db, "moving", &v2, Some(("k", "b"))).await.expect("create") else {
        panic!("the current definition is pinned")
    };
    assert_eq!(db.execution(TENANT, id).await.expect("read").expect("exists").dag_hash, v2.hash().to_string());
    db.delete_dag(TENANT, "moving").await.expect("delete");
    assert_eq!(submit(db, "moving", &v2, None).await.expect("create"), Created::DagChanged, "deleted meanwhile");
    let pinned = db.definition(v2.hash().as_str()).await.expect("definition").expect("kept");
    assert_eq!(pinned["name"], "moving name", "the pinned definition outlives the DAG");
}
