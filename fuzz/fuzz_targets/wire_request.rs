//! A peer's request frame, as `network/codec.rs` decodes it: whatever decodes must survive a
//! re-encoding unchanged and fit the request limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_protocol::Request;
use shoal_protocol::wire::REQUEST_BYTES_MAX;

fuzz_target!(|frame: &[u8]| {
    let Ok(request) = Request::decode(frame) else {
        return;
    };
    let encoded = request.encode().expect("a decoded request encodes");
    assert!(encoded.len() <= REQUEST_BYTES_MAX);
    assert_eq!(Request::decode(&encoded).expect("re-decodes"), request);
});
