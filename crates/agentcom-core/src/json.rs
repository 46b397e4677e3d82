//! Limits on JSON nesting: one place for what a client may send and what a record may hold.
//!
//! serde_json refuses to decode documents nested deeper than 127 levels. A stored record
//! wraps what a client sent (a mailbox entry wraps a message, which wraps its payload), so
//! client documents are held to [`MAX_CLIENT_DEPTH`], records to [`MAX_RECORD_DEPTH`], and
//! the headroom between them and the decoder's limit keeps every record readable back.

/// The deepest nesting of a JSON document a client sends (request body, websocket frame).
pub const MAX_CLIENT_DEPTH: usize = 64;

/// The deepest nesting of a stored record: the client's document plus the hub's wrapping.
pub const MAX_RECORD_DEPTH: usize = MAX_CLIENT_DEPTH + 32;

/// The deepest nesting serde_json's decoder reads (its recursion limit is 128 levels,
/// reached at the 128th bracket); every stored record must stay within it.
pub const DECODER_DEPTH_LIMIT: usize = 127;

const _: () = assert!(MAX_RECORD_DEPTH < DECODER_DEPTH_LIMIT);

/// The nesting depth of a JSON text: the most arrays and objects open at once. Counts the
/// brackets outside strings without validating the text, in one pass and constant memory,
/// so it is safe to run before parsing a hostile document.
///
/// It runs on every write and every client document, and a backup's verification runs it
/// over every stored byte: the contents of strings, most of a large record, are skipped
/// with `memchr` (to the next quote or backslash) rather than looked at a byte at a time.
pub fn nesting_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut at = 0;
    while let Some(&b) = text.get(at) {
        at += 1;
        match b {
            b'"' => loop {
                // An unterminated string runs to the end: no bracket after it counts.
                let Some(rest) = text.get(at..) else {
                    return deepest;
                };
                match memchr::memchr2(b'"', b'\\', rest) {
                    None => return deepest,
                    // A backslash escapes the byte after it, a quote included.
                    Some(n) if rest[n] == b'\\' => at += n + 2,
                    Some(n) => {
                        at += n + 1;
                        break;
                    }
                }
            },
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Is this client document within [`MAX_CLIENT_DEPTH`]?
pub fn client_depth_ok(text: &[u8]) -> bool {
    nesting_depth(text) <= MAX_CLIENT_DEPTH
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn depth_counts_brackets_outside_strings() {
        assert_eq!(nesting_depth(b"1"), 0);
        assert_eq!(nesting_depth(b"{}"), 1);
        assert_eq!(nesting_depth(br#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(nesting_depth(br#"{"a":"[[[[\"[[[","b":[]}"#), 2);
        assert_eq!(nesting_depth(br#"["\\",[]]"#), 2);
        assert_eq!(nesting_depth(nested(200).as_bytes()), 200);
    }

    /// The byte-at-a-time scan `nesting_depth` replaced, as the reference.
    fn depth_byte_by_byte(text: &[u8]) -> usize {
        let (mut depth, mut deepest) = (0usize, 0usize);
        let (mut in_string, mut escaped) = (false, false);
        for &b in text {
            if in_string {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        deepest
    }

    proptest::proptest! {
        /// Same depth as the byte-at-a-time scan on any bytes, JSON or not: brackets,
        /// quotes and backslashes in every order, unterminated strings, a trailing escape.
        #[test]
        fn skipping_strings_keeps_the_depth(text in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::sample::select(b"[]{}\"\\\\ax".to_vec()),
                proptest::num::u8::ANY,
            ],
            0..200,
        )) {
            proptest::prop_assert_eq!(nesting_depth(&text), depth_byte_by_byte(&text));
        }
    }

    #[test]
    fn unterminated_strings_and_trailing_escapes_end_the_count() {
        assert_eq!(nesting_depth(br#"[["abc"#), 2);
        assert_eq!(nesting_depth(br#"[["abc\"#), 2);
        assert_eq!(nesting_depth(br#"["\"[[[[]"#), 1);
        assert_eq!(nesting_depth(br#"["a\\"[[]"#), 3);
    }

    #[test]
    fn the_limits_match_serde_json() {
        let at_limit = nested(DECODER_DEPTH_LIMIT);
        assert!(serde_json::from_str::<serde_json::Value>(&at_limit).is_ok());
        let over = nested(DECODER_DEPTH_LIMIT + 1);
        assert!(serde_json::from_str::<serde_json::Value>(&over).is_err());
        assert!(client_depth_ok(nested(MAX_CLIENT_DEPTH).as_bytes()));
        assert!(!client_depth_ok(nested(MAX_CLIENT_DEPTH + 1).as_bytes()));
    }
}
