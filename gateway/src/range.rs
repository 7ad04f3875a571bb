//! The `Range` request header, as far as registries use it: one `bytes=` range.

use std::ops::Range;

/// What to do with a request's `Range` header for a blob of a known size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: serve the whole blob with 200.
    Full,
    /// Serve these bytes with 206.
    Partial(Range<u64>),
    /// A syntactically valid range outside the blob: 416.
    Unsatisfiable,
}

/// Interprets `header` for a blob of `size` bytes. As RFC 9110 allows, a header that is not a
/// single well-formed `bytes=` range is ignored and the whole blob is served.
pub fn parse(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (number(first), number(last), first.is_empty()) {
        // bytes=-N: the last N bytes.
        (None, Some(suffix), true) => {
            if suffix == 0 || size == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial(size.saturating_sub(suffix)..size)
            }
        }
        (Some(start), end, false) => {
            if end.is_none() && !last.is_empty() {
                return RangeRequest::Full;
            }
            if let Some(end) = end
                && end < start
            {
                return RangeRequest::Full;
            }
            if start >= size {
                return RangeRequest::Unsatisfiable;
            }
            let end_exclusive = end.map_or(size, |end| end.saturating_add(1).min(size));
            RangeRequest::Partial(start..end_exclusive)
        }
        _ => RangeRequest::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_are_interpreted_like_http() {
        use RangeRequest::*;
        let cases: [(Option<&str>, u64, RangeRequest); 16] = [
            (None, 10, Full),
            (Some("bytes=0-"), 10, Partial(0..10)),
            (Some("bytes=0-0"), 10, Partial(0..1)),
            (Some("bytes=2-5"), 10, Partial(2..6)),
            (Some("bytes=2-500"), 10, Partial(2..10)),
            (Some("bytes=-3"), 10, Partial(7..10)),
            (Some("bytes=-30"), 10, Partial(0..10)),
            (Some("bytes=9-"), 10, Partial(9..10)),
            (Some("bytes=10-"), 10, Unsatisfiable),
            (Some("bytes=10-20"), 10, Unsatisfiable),
            (Some("bytes=-0"), 10, Unsatisfiable),
            (Some("bytes=0-"), 0, Unsatisfiable),
            (Some("bytes=5-2"), 10, Full),
            (Some("bytes=0-1,3-4"), 10, Full),
            (Some("items=0-1"), 10, Full),
            (Some("bytes=a-b"), 10, Full),
        ];
        for (header, size, expected) in cases {
            assert_eq!(parse(header, size), expected, "{header:?} of {size}");
        }
    }

    proptest! {
        #[test]
        fn partial_ranges_lie_within_the_blob(header in "bytes=[0-9]{0,4}-[0-9]{0,4}", size in 0u64..5000) {
            if let RangeRequest::Partial(range) = parse(Some(&header), size) {
                prop_assert!(range.start < range.end);
                prop_assert!(range.end <= size);
            }
        }

        #[test]
        fn arbitrary_headers_never_panic(header in ".{0,40}", size in any::<u64>()) {
            let _ = parse(Some(&header), size);
        }
    }
}
