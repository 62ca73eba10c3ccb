//! A bounded `application/x-www-form-urlencoded` query-string parser; owns no I/O and never panics.
//!
//! Values are percent-decoded (`%XX`, and `+` as a space) because that is what the Pusher SDKs
//! sign: they sign the unencoded values, then some send them raw (pusher-http-node joins `k=v`
//! without encoding) and some percent-encode them (pusher-http-php hands the params to Guzzle's
//! `query` option). Decoding once makes both arrive at the same string to sign.

/// Longest raw query string accepted, in bytes. Default 4096: a signed Pusher request carries
/// five auth params (~170 bytes) plus `info`/`filter_by_prefix`; anything near this is not an
/// SDK. Past it: [`QueryError::TooLong`] (HTTP 400).
pub const QUERY_BYTES_MAX: usize = 4096;

/// Most parameters accepted in one query string. Default 32 (an SDK sends at most 8). Past it:
/// [`QueryError::TooManyParams`] (HTTP 400). Bounds the sort done when verifying a signature.
pub const QUERY_PARAMS_MAX: usize = 32;

/// Why a query string was refused. Maps to HTTP 400 through [`crate::http_api::ApiError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("query string of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("query string has more than {max} parameters")]
    TooManyParams { max: usize },
    /// A `%` not followed by two hex digits.
    #[error("bad percent-encoding in query string")]
    BadPercentEncoding,
    /// A decoded key or value is not UTF-8.
    #[error("query string is not valid UTF-8 once decoded")]
    NotUtf8,
    /// The same key twice (compared lower-cased): which one was signed would be ambiguous.
    #[error("query parameter {0:?} appears more than once")]
    DuplicateParam(String),
}

/// A parsed query string: decoded `(key, value)` pairs in arrival order, keys as sent.
///
/// INVARIANT: no two keys are equal once lower-cased; at most [`QUERY_PARAMS_MAX`] pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    params: Vec<(String, String)>,
}

impl Query {
    /// Parses the bytes after `?` (without the `?`). Empty pieces (`a=1&&b=2`) are skipped; a
    /// piece without `=` is a key with an empty value.
    pub fn parse(raw: &[u8]) -> Result<Self, QueryError> {
        if raw.len() > QUERY_BYTES_MAX {
            return Err(QueryError::TooLong {
                len: raw.len(),
                max: QUERY_BYTES_MAX,
            });
        }
        let mut params: Vec<(String, String)> = Vec::new();
        for piece in raw.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            if params.len() == QUERY_PARAMS_MAX {
                return Err(QueryError::TooManyParams {
                    max: QUERY_PARAMS_MAX,
                });
            }
            let (key, value) = match piece.iter().position(|&b| b == b'=') {
                Some(i) => (&piece[..i], &piece[i + 1..]),
                None => (piece, &[][..]),
            };
            let key = percent_decode(key)?;
            let value = percent_decode(value)?;
            if params.iter().any(|(k, _)| k.eq_ignore_ascii_case(&key)) {
                return Err(QueryError::DuplicateParam(key));
            }
            params.push((key, value));
        }
        Ok(Self { params })
    }

    /// The value of `key` (matched case-insensitively, as the signature lower-cases keys).
    pub fn value(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// All `(key, value)` pairs, decoded, in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
}

/// Decodes `%XX` and `+` (a space, per the form encoding PHP's `http_build_query` may use).
fn percent_decode(raw: &[u8]) -> Result<String, QueryError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let hi = raw.get(i + 1).and_then(|&b| hex_value(b));
                let lo = raw.get(i + 2).and_then(|&b| hex_value(b));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(QueryError::BadPercentEncoding),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| QueryError::NotUtf8)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_decodes_in_arrival_order() {
        let q = Query::parse(b"b=2&a=x%2Cy&c=a+b&d&&e=").unwrap();
        let pairs: Vec<_> = q.iter().collect();
        assert_eq!(
            pairs,
            [("b", "2"), ("a", "x,y"), ("c", "a b"), ("d", ""), ("e", "")]
        );
        assert_eq!(q.value("A"), Some("x,y"));
        assert_eq!(q.value("zz"), None);
        assert_eq!(q.len(), 5);
    }

    #[test]
    fn empty_query_has_no_params() {
        assert!(Query::parse(b"").unwrap().is_empty());
        assert!(Query::parse(b"&&").unwrap().is_empty());
    }

    #[test]
    fn value_may_contain_equals_sign() {
        let q = Query::parse(b"k=a=b").unwrap();
        assert_eq!(q.value("k"), Some("a=b"));
    }

    #[test]
    fn refusals() {
        let cases: &[(&[u8], QueryError)] = &[
            (b"a=%zz", QueryError::BadPercentEncoding),
            (b"a=%4", QueryError::BadPercentEncoding),
            (b"a=%", QueryError::BadPercentEncoding),
            (b"a=%ff", QueryError::NotUtf8),
            (b"a=1&A=2", QueryError::DuplicateParam("A".into())),
        ];
        for (raw, want) in cases {
            assert_eq!(Query::parse(raw).as_ref(), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn query_over_4096_bytes_is_refused() {
        let raw = vec![b'a'; QUERY_BYTES_MAX + 1];
        assert_eq!(
            Query::parse(&raw),
            Err(QueryError::TooLong {
                len: QUERY_BYTES_MAX + 1,
                max: QUERY_BYTES_MAX
            })
        );
        assert!(Query::parse(&raw[..QUERY_BYTES_MAX]).is_ok());
    }

    #[test]
    fn query_over_32_params_is_refused() {
        let make = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join("&")
        };
        assert!(Query::parse(make(QUERY_PARAMS_MAX).as_bytes()).is_ok());
        assert_eq!(
            Query::parse(make(QUERY_PARAMS_MAX + 1).as_bytes()),
            Err(QueryError::TooManyParams {
                max: QUERY_PARAMS_MAX
            })
        );
    }
}
