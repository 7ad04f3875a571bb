//! A peer's response frame, as `network/codec.rs` decodes it. Whatever decodes must keep its
//! invariants (a `Have` bitmap within its length, an index of the right shape, announcements
//! within their limits) and survive a re-encoding unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_protocol::Response;

fuzz_target!(|frame: &[u8]| {
    let Ok(response) = Response::decode(frame) else {
        return;
    };
    match &response {
        Response::Have { chunks, .. } => {
            assert_eq!(chunks.iter_ones().count() as u32, chunks.count_ones());
            assert!(chunks.count_ones() <= chunks.len());
        }
        Response::Index(index) => index.validate().expect("decoded indexes are valid"),
        Response::Announcements { announcements, .. } => {
            for signed in announcements {
                let _ = signed.verify();
            }
        }
        _ => {}
    }
    let encoded = response.encode().expect("a decoded response encodes");
    assert_eq!(Response::decode(&encoded).expect("re-decodes"), response);
});
