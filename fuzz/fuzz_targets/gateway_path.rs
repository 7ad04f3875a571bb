//! A `/v2/...` request path and `ns` parameter as the gateway decodes them: route, then the
//! repository name within the namespace.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_gateway::path::Route;
use shoal_protocol::RepoName;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // An optional namespace after a newline, as `?ns=` would give it.
    let (path, namespace) = text.split_once('\n').unwrap_or((text, "docker.io"));
    let Ok(route) = Route::parse(path) else {
        return;
    };
    let name = match &route {
        Route::Base | Route::Catalog => return,
        Route::Manifest { name, .. }
        | Route::Blob { name, .. }
        | Route::Upload { name }
        | Route::Tags { name }
        | Route::Referrers { name, .. } => name,
    };
    assert!(path.contains(name.as_str()));
    if let Ok(repo) = RepoName::new(namespace, name) {
        assert_eq!(repo.path(), name);
        assert_eq!(
            RepoName::from_qualified(&repo.qualified()).expect("qualified names round-trip"),
            repo
        );
    }
});
