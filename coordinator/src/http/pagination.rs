//! Cursor pagination shared by the list endpoints: opaque cursors, page limits, `since` times.

use uuid::Uuid;

use super::ApiResult;
use crate::endpoints::{DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};
use crate::problem::ApiError;

/// `24h`, `30m`, `7d`, `90s` before now, or an RFC 3339 time.
pub(super) fn parse_since(text: &str) -> ApiResult<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let bad = || {
        ApiError::BadRequest(format!("since must be a duration like 24h, 30m, 7d or an RFC 3339 time, not {text:?}"))
    };
    let unit_at = text.char_indices().last().map_or(0, |(i, _)| i);
    let (number, unit) = text.split_at(unit_at);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        "d" => n.checked_mul(86_400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    // Within a century: PostgreSQL cannot hold times much further back.
    let delta =
        chrono::Duration::try_seconds(seconds).filter(|_| (0..=36_500 * 86_400).contains(&seconds)).ok_or_else(bad)?;
    chrono::Utc::now().checked_sub_signed(delta).ok_or_else(bad)
}

/// `limit` of a list: 1 to [`MAX_PAGE_LIMIT`], [`DEFAULT_PAGE_LIMIT`] when absent.
pub(super) fn page_limit(query: &std::collections::HashMap<String, String>) -> ApiResult<i64> {
    match query.get("limit") {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_PAGE_LIMIT).contains(l))
            .ok_or_else(|| ApiError::BadRequest(format!("limit must be 1 to {MAX_PAGE_LIMIT}"))),
    }
}

/// Cursors are opaque to clients: the hex of a short text only this API writes.
pub(super) fn encode_text_cursor(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn decode_text(cursor: &str) -> ApiResult<String> {
    let bytes: Option<Vec<u8>> = (0..cursor.len())
        .step_by(2)
        .map(|i| cursor.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    bytes.and_then(|b| String::from_utf8(b).ok()).ok_or_else(bad_cursor)
}

pub(super) fn bad_cursor() -> ApiError {
    ApiError::BadRequest("cursor is not one this API returned".into())
}

/// The execution list's cursor: `<microseconds>:<uuid>` of the last item.
pub(super) fn encode_cursor(at: chrono::DateTime<chrono::Utc>, id: Uuid) -> String {
    encode_text_cursor(&format!("{}:{id}", at.timestamp_micros()))
}

pub(super) fn decode_cursor(cursor: &str) -> ApiResult<(chrono::DateTime<chrono::Utc>, Uuid)> {
    let text = decode_text(cursor)?;
    let (micros, id) = text.split_once(':').ok_or_else(bad_cursor)?;
    let at =
        chrono::DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad_cursor())?).ok_or_else(bad_cursor)?;
    // A cursor this API wrote holds a submission time; anything outside years 1 to 9999 is not one.
    if !(1..=9999).contains(&chrono::Datelike::year(&at)) {
        return Err(bad_cursor());
    }
    Ok((at, Uuid::parse_str(id).map_err(|_| bad_cursor())?))
}

/// The DAG list's cursor: the id of the last item.
pub(super) fn decode_text_cursor(cursor: &str) -> ApiResult<String> {
    let text = decode_text(cursor)?;
    engine::ids::check_id(&text).map_err(|_| bad_cursor())?;
    Ok(text)
}
