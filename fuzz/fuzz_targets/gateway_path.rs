//! A `/v2/...` request path and `ns` parameter as the gateway decodes them: route, then the
//! repository name within the namespace.
//! The checks are `shoal_fuzz::gateway_path` (src/lib.rs), which the stable replay test runs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shoal_fuzz::gateway_path(data));
