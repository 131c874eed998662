//! What the two SQL adapters share: their driver's errors mapped into [`StoreError`], and
//! status columns decoded as the core's enums. Only `postgres/` and `sqlite/` use it.

use serde::de::DeserializeOwned;

use super::{StoreError, from_text};

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let message = e.to_string();
        if is_transient(&e) {
            StoreError::Unavailable(message)
        } else if matches!(e, sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_)) {
            StoreError::Corrupt(message)
        } else {
            StoreError::Backend(message)
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(inner) => inner.into(),
            e => StoreError::Backend(format!("migration: {e}")),
        }
    }
}

/// The fault is the database's state and not the request: the pool had no free connection in
/// time, the server is unreachable or ended the session (an administrator's
/// `pg_terminate_backend`, a shutdown or crash restart, a connection lost mid-message), it is
/// out of connections, a statement timed out, a serializable transaction lost a race, or
/// (SQLite) another process holds the database file (`SQLITE_BUSY`, `SQLITE_LOCKED`, with their
/// extended codes).
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => {
            if e.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                let primary = e.code().and_then(|c| c.parse::<i32>().ok()).map(|c| c & 0xff);
                matches!(primary, Some(5 | 6))
            } else {
                e.code().is_some_and(|code| transient_sqlstate(&code))
            }
        }
        _ => false,
    }
}

/// PostgreSQL error codes (SQLSTATE) that describe the server's state, not the statement:
/// class 08 (connection exception), 53 (insufficient resources, such as too many connections),
/// 57 (operator intervention: admin or crash shutdown, cannot connect now, statement timeout
/// `57014`), and 40001/40P01 (serialization failure, deadlock: the transaction may simply be
/// run again).
fn transient_sqlstate(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "53" | "57")) || matches!(code, "40001" | "40P01")
}

/// Column `column` of a SQL row as the core's enum it names (a NULL as `None`); an unknown name
/// is a decode error of that column. Both SQL adapters read statuses through it.
pub(crate) fn column_enum<'r, R, T>(row: &'r R, column: &str) -> Result<Option<T>, sqlx::Error>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    T: DeserializeOwned,
{
    let Some(name) = row.try_get::<Option<String>, _>(column)? else { return Ok(None) };
    from_text(&name).map(Some).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("unknown value {name:?} in the database").into(),
    })
}

/// [`column_enum`] of a NOT NULL column.
pub(crate) fn required_enum<'r, R, T>(row: &'r R, column: &str) -> Result<T, sqlx::Error>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    T: DeserializeOwned,
{
    column_enum(row, column)?.ok_or_else(|| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: "NULL in a NOT NULL column".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_state_codes_are_transient_and_statement_errors_are_not() {
        for code in ["57P01", "57P02", "57P03", "57014", "08006", "08003", "53300", "40001", "40P01"] {
            assert!(transient_sqlstate(code), "{code} is worth retrying");
        }
        for code in ["23505", "23503", "22P02", "42P01", "42703", "P0001", "XX000", "5", ""] {
            assert!(!transient_sqlstate(code), "{code} is a refusal");
        }
    }

    #[test]
    fn driver_errors_are_classified_by_what_the_caller_can_do() {
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(StoreError::from(sqlx::Error::PoolClosed).is_unavailable());
        let decode = sqlx::Error::ColumnDecode { index: "status".into(), source: "unknown value".into() };
        assert!(matches!(StoreError::from(decode), StoreError::Corrupt(_)));
        assert!(matches!(StoreError::from(sqlx::Error::RowNotFound), StoreError::Backend(_)));
    }
}
