//! Keyset pagination: opaque cursors (`kind:value`, base64) that only the
//! list that made them accepts, and page sizes.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;

use crate::queries::ReadError;
use crate::views::{Cursor, PageRequest, MAX_PAGE};

/// The page size when the request names none.
const DEFAULT_PAGE: u32 = 20;

/// How many items a page request asks for, within [`MAX_PAGE`].
pub(crate) fn limit(page: &PageRequest) -> i64 {
    i64::from(match page.first {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    })
}

/// The cursor of the item whose key is `value` in a list of `kind`.
pub(crate) fn cursor(kind: &str, value: &str) -> Cursor {
    Cursor(B64.encode(format!("{kind}:{value}")))
}

/// The key a cursor of a list of `kind` holds; another list's cursor, or
/// anything else, is [`ReadError::InvalidCursor`].
pub(crate) fn decode_cursor(kind: &str, cursor: &Cursor) -> Result<String, ReadError> {
    let bytes = B64
        .decode(&cursor.0)
        .map_err(|_| ReadError::InvalidCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| ReadError::InvalidCursor)?;
    text.strip_prefix(kind)
        .and_then(|rest| rest.strip_prefix(':'))
        .map(str::to_string)
        .ok_or(ReadError::InvalidCursor)
}
