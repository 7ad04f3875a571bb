//! The gateway's handlers, driven through `tower::ServiceExt::oneshot` on the router without a
//! socket (as in axum's `examples/testing`), over an in-memory [`ContentSource`].

mod common;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use shoal_gateway::Manifest;
use shoal_protocol::media_type::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use shoal_protocol::{Digest, ParsedManifest};
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------------
// Base endpoint.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn base_endpoint_answers_with_api_version() {
    let f = fixture();
    for uri in ["/v2/", "/v2"] {
        let response = get(&f.app, uri).await;
        assert_eq!(response.status, StatusCode::OK, "{uri}");
        assert_eq!(
            response.header("docker-distribution-api-version"),
            "registry/2.0"
        );
        assert_eq!(response.json(), json!({}));
    }
    let response = head(&f.app, "/v2/").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        response.header("docker-distribution-api-version"),
        "registry/2.0"
    );
    assert!(response.body.is_empty());
}

#[tokio::test]
async fn unknown_endpoints_are_404_with_api_version() {
    let f = fixture();
    for uri in [
        "/v1/",
        "/",
        "/v2/library/alpine",
        "/v2/library/alpine/other/x",
        "/v2/library/alpine/tags",
    ] {
        get(&f.app, uri)
            .await
            .assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    }
    let too_long = format!("/v2/{}/tags/list", "a".repeat(2000));
    get(&f.app, &too_long)
        .await
        .assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
}

// ---------------------------------------------------------------------------------------------
// Manifests.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn manifest_by_tag_and_digest_is_served_byte_exact() {
    let f = fixture();
    let by_tag = get(&f.app, "/v2/library/alpine/manifests/3.20").await;
    assert_manifest(&by_tag, &f.oci_manifest);
    assert_eq!(by_tag.body, f.oci_manifest.bytes);
    assert_eq!(
        by_tag.header("etag"),
        format!("\"{}\"", f.oci_manifest.digest)
    );

    let by_digest = get(
        &f.app,
        &format!("/v2/library/alpine/manifests/{}", f.oci_manifest.digest),
    )
    .await;
    assert_manifest(&by_digest, &f.oci_manifest);
    assert_eq!(by_digest.body, f.oci_manifest.bytes);

    // A manifest that is not tagged is reachable by digest.
    let by_digest = get(
        &f.app,
        &format!("/v2/library/alpine/manifests/{}", f.signature.digest),
    )
    .await;
    assert_manifest(&by_digest, &f.signature);
    assert_eq!(by_digest.body, f.signature.bytes);
}

#[tokio::test]
async fn manifest_head_has_get_headers_and_no_body() {
    let f = fixture();
    for reference in ["latest".to_owned(), f.oci_index.digest.to_string()] {
        let uri = format!("/v2/library/alpine/manifests/{reference}");
        let got = get(&f.app, &uri).await;
        let headed = head(&f.app, &uri).await;
        assert_manifest(&headed, &f.oci_index);
        assert!(headed.body.is_empty(), "HEAD sent a body: {headed:?}");
        for name in [
            "content-type",
            "content-length",
            "docker-content-digest",
            "etag",
        ] {
            assert_eq!(
                headed.header(name),
                got.header(name),
                "{name} differs between GET and HEAD"
            );
        }
        assert_eq!(got.header("content-length"), got.body.len().to_string());
    }
}

#[tokio::test]
async fn each_manifest_kind_is_served_to_a_client_accepting_it() {
    let f = fixture();
    let cases = [
        ("3.20", OCI_MANIFEST, &f.oci_manifest),
        ("latest", OCI_INDEX, &f.oci_index),
        ("docker-v2", DOCKER_MANIFEST, &f.docker_amd64),
        ("multi", DOCKER_MANIFEST_LIST, &f.docker_list),
    ];
    for (tag, accept, manifest) in cases {
        let response = get_with(
            &f.app,
            &format!("/v2/library/alpine/manifests/{tag}"),
            &[("accept", accept)],
        )
        .await;
        assert_manifest(&response, manifest);
        assert_eq!(response.body, manifest.bytes, "{tag}");
    }
}

#[tokio::test]
async fn accept_headers_are_merged_across_headers_lists_and_parameters() {
    let f = fixture();
    let uri = "/v2/library/alpine/manifests/latest";
    // Several Accept headers, as containerd sends them.
    let several = [
        ("accept", DOCKER_MANIFEST),
        ("accept", OCI_MANIFEST),
        ("accept", OCI_INDEX),
    ];
    let response = get_with(&f.app, uri, &several).await;
    assert_manifest(&response, &f.oci_index);
    assert_eq!(response.body, f.oci_index.bytes);

    // One comma-separated list with parameters, as Docker sends it.
    let list = format!(
        "{DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST};q=0.9, {OCI_MANIFEST} ; q=0.8, {OCI_INDEX};q=0.5"
    );
    let response = get_with(&f.app, uri, &[("accept", &list)]).await;
    assert_manifest(&response, &f.oci_index);

    // Media types compare case-insensitively.
    let upper = OCI_INDEX.to_ascii_uppercase();
    assert_manifest(
        &get_with(&f.app, uri, &[("accept", &upper)]).await,
        &f.oci_index,
    );

    // No preference and wildcards take whatever is stored.
    assert_manifest(&get(&f.app, uri).await, &f.oci_index);
    assert_manifest(
        &get_with(&f.app, uri, &[("accept", "*/*")]).await,
        &f.oci_index,
    );
    assert_manifest(
        &get_with(&f.app, uri, &[("accept", "application/*")]).await,
        &f.oci_index,
    );
    assert_manifest(
        &get_with(
            &f.app,
            "/v2/library/alpine/manifests/multi",
            &[("accept", "*/*")],
        )
        .await,
        &f.docker_list,
    );
}

#[tokio::test]
async fn a_client_not_accepting_oci_indexes_gets_manifest_unknown() {
    let f = fixture();
    let accept = format!("{OCI_MANIFEST}, {DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}");
    for reference in ["latest".to_owned(), f.oci_index.digest.to_string()] {
        let uri = format!("/v2/library/alpine/manifests/{reference}");
        get_with(&f.app, &uri, &[("accept", &accept)])
            .await
            .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
        let headed = head_with(&f.app, &uri, &[("accept", &accept)]).await;
        assert_eq!(headed.status, StatusCode::NOT_FOUND);
        assert!(headed.body.is_empty());
    }
    // Nor is an image manifest sent to a client that only takes indexes.
    get_with(
        &f.app,
        "/v2/library/alpine/manifests/3.20",
        &[("accept", OCI_INDEX)],
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    get_with(
        &f.app,
        "/v2/library/alpine/manifests/3.20",
        &[("accept", "text/*")],
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn a_schema2_only_client_asking_by_tag_for_a_list_gets_the_linux_amd64_manifest() {
    let f = fixture();
    let uri = "/v2/library/alpine/manifests/multi";
    let response = get_with(&f.app, uri, &[("accept", DOCKER_MANIFEST)]).await;
    assert_manifest(&response, &f.docker_amd64);
    assert_eq!(response.body, f.docker_amd64.bytes);

    let headed = head_with(&f.app, uri, &[("accept", DOCKER_MANIFEST)]).await;
    assert_manifest(&headed, &f.docker_amd64);
    assert!(headed.body.is_empty());

    // By digest the client asked for that exact list: there is nothing else to give.
    get_with(
        &f.app,
        &format!("/v2/library/alpine/manifests/{}", f.docker_list.digest),
        &[("accept", DOCKER_MANIFEST)],
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    // A list without linux/amd64 cannot be downgraded.
    get_with(
        &f.app,
        "/v2/library/alpine/manifests/arm-only",
        &[("accept", DOCKER_MANIFEST)],
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    // The list itself is still served to those who accept it.
    let response = get_with(
        &f.app,
        "/v2/library/alpine/manifests/arm-only",
        &[("accept", DOCKER_MANIFEST_LIST)],
    )
    .await;
    assert_manifest(&response, &f.arm_only_list);
    // A client accepting neither schema 2 nor lists gets nothing.
    get_with(&f.app, uri, &[("accept", OCI_MANIFEST)])
        .await
        .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn missing_manifests_and_repositories_are_told_apart() {
    let f = fixture();
    get(&f.app, "/v2/library/alpine/manifests/nope")
        .await
        .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    let unknown_digest = Digest::of(b"never stored");
    get(
        &f.app,
        &format!("/v2/library/alpine/manifests/{unknown_digest}"),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    // A tag pointing at a manifest the store lacks.
    get(&f.app, "/v2/org/tool/manifests/2.0?ns=ghcr.io")
        .await
        .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    get(&f.app, "/v2/library/nope/manifests/latest")
        .await
        .assert_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
    get(
        &f.app,
        &format!("/v2/library/nope/manifests/{unknown_digest}"),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
    let headed = head(&f.app, "/v2/library/nope/manifests/latest").await;
    assert_eq!(headed.status, StatusCode::NOT_FOUND);
    assert_eq!(
        headed.header("docker-distribution-api-version"),
        "registry/2.0"
    );
    assert!(headed.body.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Blobs.
// ---------------------------------------------------------------------------------------------

fn blob_uri(digest: &Digest) -> String {
    format!("/v2/library/alpine/blobs/{digest}")
}

fn assert_blob_headers(response: &Response, digest: &Digest, length: usize) {
    assert_eq!(
        response.header("content-length"),
        length.to_string(),
        "{response:?}"
    );
    assert_eq!(response.header("docker-content-digest"), digest.to_string());
    assert_eq!(response.header("accept-ranges"), "bytes");
    assert_eq!(response.header("content-type"), "application/octet-stream");
    assert_eq!(
        response.header("docker-distribution-api-version"),
        "registry/2.0"
    );
}

#[tokio::test]
async fn blob_get_streams_the_whole_blob() {
    let f = fixture();
    let response = get(&f.app, &blob_uri(&f.layer_digest)).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_blob_headers(&response, &f.layer_digest, 100);
    assert!(response.headers.get("content-range").is_none());
    assert_eq!(response.body, f.layer);
    assert_eq!(f.store.reads(), vec![(f.layer_digest, 0..100)]);
}

#[tokio::test]
async fn blob_head_has_headers_and_reads_nothing() {
    let f = fixture();
    let response = head(&f.app, &blob_uri(&f.layer_digest)).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_blob_headers(&response, &f.layer_digest, 100);
    assert!(response.body.is_empty());

    let response = head_with(
        &f.app,
        &blob_uri(&f.layer_digest),
        &[("range", "bytes=10-19")],
    )
    .await;
    assert_eq!(response.status, StatusCode::PARTIAL_CONTENT);
    assert_blob_headers(&response, &f.layer_digest, 10);
    assert_eq!(response.header("content-range"), "bytes 10-19/100");
    assert!(response.body.is_empty());
    assert!(
        f.store.reads().is_empty(),
        "HEAD read blob bytes: {:?}",
        f.store.reads()
    );
}

#[tokio::test]
async fn blob_ranges_give_206_with_exact_bytes() {
    let f = fixture();
    let cases = [
        ("bytes=0-9", 0..10, "bytes 0-9/100"),
        ("bytes=10-", 10..100, "bytes 10-99/100"),
        ("bytes=-5", 95..100, "bytes 95-99/100"),
        ("bytes=99-99", 99..100, "bytes 99-99/100"),
        ("bytes=90-1000", 90..100, "bytes 90-99/100"),
        ("bytes=-500", 0..100, "bytes 0-99/100"),
    ];
    for (range, expected, content_range) in cases {
        let response = get_with(&f.app, &blob_uri(&f.layer_digest), &[("range", range)]).await;
        assert_eq!(response.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_blob_headers(&response, &f.layer_digest, expected.len());
        assert_eq!(response.header("content-range"), content_range, "{range}");
        assert_eq!(
            response.body,
            f.layer.slice(expected.start..expected.end),
            "{range}"
        );
        let (digest, read) = f.store.reads().pop().expect("a read");
        assert_eq!(
            (digest, read),
            (f.layer_digest, expected.start as u64..expected.end as u64),
            "{range}"
        );
    }
}

#[tokio::test]
async fn unusable_ranges_are_ignored_and_the_whole_blob_served() {
    let f = fixture();
    for range in [
        "bytes=5-2",
        "bytes=0-1,5-6",
        "items=0-9",
        "bytes=x-y",
        "bytes=5",
    ] {
        let response = get_with(&f.app, &blob_uri(&f.layer_digest), &[("range", range)]).await;
        assert_eq!(response.status, StatusCode::OK, "{range}");
        assert_blob_headers(&response, &f.layer_digest, 100);
        assert_eq!(response.body, f.layer, "{range}");
    }
}

#[tokio::test]
async fn unsatisfiable_ranges_are_416_range_invalid() {
    let f = fixture();
    for range in ["bytes=1000-", "bytes=100-", "bytes=100-200", "bytes=-0"] {
        let response = get_with(&f.app, &blob_uri(&f.layer_digest), &[("range", range)]).await;
        response.assert_error(StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID");
        assert_eq!(response.header("content-range"), "bytes */100", "{range}");
    }
    let response = head_with(
        &f.app,
        &blob_uri(&f.layer_digest),
        &[("range", "bytes=1000-")],
    )
    .await;
    assert_eq!(response.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(response.header("content-range"), "bytes */100");
    assert!(f.store.reads().is_empty());
}

#[tokio::test]
async fn an_empty_blob_is_served_empty() {
    let f = fixture();
    assert_eq!(
        f.empty_digest.to_string(),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let response = get(&f.app, &blob_uri(&f.empty_digest)).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_blob_headers(&response, &f.empty_digest, 0);
    assert!(response.body.is_empty());
    let response = head(&f.app, &blob_uri(&f.empty_digest)).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_blob_headers(&response, &f.empty_digest, 0);
    // No byte of an empty blob can be addressed.
    let response = get_with(&f.app, &blob_uri(&f.empty_digest), &[("range", "bytes=0-")]).await;
    response.assert_error(StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID");
    assert_eq!(response.header("content-range"), "bytes */0");
    assert!(f.store.reads().is_empty(), "an empty blob needs no read");
}

#[tokio::test]
async fn missing_blobs_are_blob_unknown() {
    let f = fixture();
    let unknown = Digest::of(b"never stored");
    get(&f.app, &blob_uri(&unknown))
        .await
        .assert_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    let headed = head(&f.app, &blob_uri(&unknown)).await;
    assert_eq!(headed.status, StatusCode::NOT_FOUND);
    assert!(headed.body.is_empty());
    // A blob of another repository is not served through this one.
    let ghcr = Digest::of(b"ghcr blob");
    get(&f.app, &blob_uri(&ghcr))
        .await
        .assert_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    let response = get(&f.app, &format!("/v2/org/tool/blobs/{ghcr}?ns=ghcr.io")).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.body, &b"ghcr blob"[..]);
}

#[tokio::test]
async fn a_blob_read_failure_ends_the_body_with_an_error() {
    let f = fixture();
    f.store.break_blob(f.layer_digest);
    let response = f
        .app
        .clone()
        .oneshot(request(Method::GET, &blob_uri(&f.layer_digest), &[]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-length"], "100");
    assert!(
        response.into_body().collect().await.is_err(),
        "a truncated body must not end cleanly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_blob_gets_all_get_their_bytes() {
    let f = fixture();
    let big: Bytes = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect::<Vec<_>>()
        .into();
    let digest = f.store.add_blob(&f.alpine, big.clone());
    let mut tasks = Vec::new();
    for i in 0..100usize {
        let app = f.app.clone();
        let big = big.clone();
        tasks.push(tokio::spawn(async move {
            let uri = blob_uri(&digest);
            // Every fourth request asks for a different range.
            let (range, expected) = if i % 4 == 0 {
                let start = i * 611;
                (Some(format!("bytes={start}-")), big.slice(start..))
            } else {
                (None, big.clone())
            };
            let headers: Vec<(&str, &str)> = range.iter().map(|r| ("range", r.as_str())).collect();
            let response = send(&app, request(Method::GET, &uri, &headers)).await;
            let status = if range.is_some() {
                StatusCode::PARTIAL_CONTENT
            } else {
                StatusCode::OK
            };
            assert_eq!(response.status, status, "request {i}");
            assert_eq!(
                response.header("content-length"),
                expected.len().to_string(),
                "request {i}"
            );
            assert!(response.body == expected, "request {i} got the wrong bytes");
        }));
    }
    for task in tasks {
        task.await.expect("request task");
    }
    assert_eq!(f.store.reads().len(), 100);
}

// ---------------------------------------------------------------------------------------------
// Tags and catalog.
// ---------------------------------------------------------------------------------------------

fn link_target(response: &Response) -> Option<String> {
    let link = response.headers.get("link")?.to_str().expect("ASCII link");
    let target = link
        .strip_suffix("; rel=\"next\"")
        .and_then(|l| l.strip_prefix('<'))
        .and_then(|l| l.strip_suffix('>'))
        .unwrap_or_else(|| panic!("malformed Link header {link:?}"));
    Some(target.to_owned())
}

#[tokio::test]
async fn tags_list_everything_sorted() {
    let f = fixture();
    let response = get(&f.app, "/v2/pag/tags/tags/list").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("content-type"), "application/json");
    assert_eq!(
        response.header("docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(
        response.json(),
        json!({ "name": "pag/tags", "tags": ["a", "b", "c", "d", "e"] })
    );
    assert!(response.headers.get("link").is_none());

    let headed = head(&f.app, "/v2/pag/tags/tags/list").await;
    assert_eq!(headed.status, StatusCode::OK);
    assert!(headed.body.is_empty());
    assert_eq!(
        headed.header("content-length"),
        response.body.len().to_string()
    );
}

#[tokio::test]
async fn tags_paginate_with_n_last_and_link() {
    let f = fixture();
    let first = get(&f.app, "/v2/pag/tags/tags/list?n=2").await;
    assert_eq!(first.json()["tags"], json!(["a", "b"]));
    assert_eq!(
        first.header("link"),
        "</v2/pag/tags/tags/list?n=2&last=b>; rel=\"next\""
    );

    let second = get(&f.app, &link_target(&first).unwrap()).await;
    assert_eq!(
        second.json(),
        json!({ "name": "pag/tags", "tags": ["c", "d"] })
    );
    assert_eq!(
        link_target(&second).unwrap(),
        "/v2/pag/tags/tags/list?n=2&last=d"
    );

    let last = get(&f.app, &link_target(&second).unwrap()).await;
    assert_eq!(last.json()["tags"], json!(["e"]));
    assert!(
        last.headers.get("link").is_none(),
        "the last page links nowhere: {last:?}"
    );

    // Exactly filling a page leaves nothing next.
    let exact = get(&f.app, "/v2/pag/tags/tags/list?n=5").await;
    assert_eq!(exact.json()["tags"], json!(["a", "b", "c", "d", "e"]));
    assert!(exact.headers.get("link").is_none());
    // `last` alone, and `last` past the end.
    assert_eq!(
        get(&f.app, "/v2/pag/tags/tags/list?last=c").await.json()["tags"],
        json!(["d", "e"])
    );
    let past = get(&f.app, "/v2/pag/tags/tags/list?n=2&last=z").await;
    assert_eq!(past.json()["tags"], json!([]));
    assert!(past.headers.get("link").is_none());
    // `n=0` asks for nothing.
    assert_eq!(
        get(&f.app, "/v2/pag/tags/tags/list?n=0").await.json()["tags"],
        json!([])
    );
}

#[tokio::test]
async fn invalid_page_sizes_are_pagination_number_invalid() {
    let f = fixture();
    for query in ["n=abc", "n=-1", "n=", "n=1.5"] {
        get(&f.app, &format!("/v2/pag/tags/tags/list?{query}"))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID");
        get(&f.app, &format!("/v2/_catalog?{query}"))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID");
    }
}

#[tokio::test]
async fn tags_of_an_unknown_repository_are_name_unknown() {
    let f = fixture();
    get(&f.app, "/v2/library/nope/tags/list")
        .await
        .assert_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
    get(&f.app, "/v2/org/tool/tags/list")
        .await
        .assert_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
}

#[tokio::test]
async fn catalog_lists_and_paginates_the_namespace() {
    let f = fixture();
    let all = [
        "a/b/c",
        "library/alpine",
        "library/busybox",
        "pag/tags",
        "team/app",
    ];
    let response = get(&f.app, "/v2/_catalog").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        response.header("docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(response.json(), json!({ "repositories": all }));
    assert!(response.headers.get("link").is_none());

    let first = get(&f.app, "/v2/_catalog?n=2").await;
    assert_eq!(
        first.json()["repositories"],
        json!(["a/b/c", "library/alpine"])
    );
    assert_eq!(
        first.header("link"),
        "</v2/_catalog?n=2&last=library/alpine>; rel=\"next\""
    );
    // Following every Link visits each repository once, in order.
    let mut seen = Vec::new();
    let mut next = Some("/v2/_catalog?n=2".to_owned());
    let mut pages = 0;
    while let Some(uri) = next {
        let page = get(&f.app, &uri).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}");
        for repo in page.json()["repositories"].as_array().unwrap() {
            seen.push(repo.as_str().unwrap().to_owned());
        }
        next = link_target(&page);
        pages += 1;
    }
    assert_eq!(seen, all);
    assert_eq!(pages, 3);

    let ghcr = get(&f.app, "/v2/_catalog?ns=ghcr.io").await;
    assert_eq!(ghcr.json(), json!({ "repositories": ["org/tool"] }));
    let empty = get(&f.app, "/v2/_catalog?ns=quay.io").await;
    assert_eq!(empty.json(), json!({ "repositories": [] }));
    // Docker Hub's aliases name the same namespace.
    assert_eq!(
        get(&f.app, "/v2/_catalog?ns=index.docker.io").await.json()["repositories"],
        json!(all)
    );
    let paged = get(&f.app, "/v2/_catalog?n=1&ns=docker.io").await;
    assert_eq!(
        paged.header("link"),
        "</v2/_catalog?n=1&last=a/b/c&ns=docker.io>; rel=\"next\""
    );
    get(&f.app, "/v2/_catalog?ns=not%20a%20host")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "NAME_INVALID");
}

// ---------------------------------------------------------------------------------------------
// Namespaces and names.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn ns_selects_the_namespace_and_docker_io_is_the_default() {
    let f = fixture();
    for uri in [
        "/v2/library/alpine/manifests/3.20",
        "/v2/library/alpine/manifests/3.20?ns=docker.io",
        "/v2/library/alpine/manifests/3.20?ns=registry-1.docker.io",
    ] {
        assert_manifest(&get(&f.app, uri).await, &f.oci_manifest);
    }
    get(&f.app, "/v2/library/alpine/manifests/3.20?ns=ghcr.io")
        .await
        .assert_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");

    let tool = get(&f.app, "/v2/org/tool/manifests/1.0?ns=ghcr.io").await;
    assert_eq!(tool.status, StatusCode::OK);
    get(&f.app, "/v2/org/tool/manifests/1.0")
        .await
        .assert_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
    get(&f.app, "/v2/org/tool/manifests/1.0?ns=docker.io")
        .await
        .assert_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");

    let tags = get(&f.app, "/v2/org/tool/tags/list?ns=ghcr.io").await;
    assert_eq!(
        tags.json(),
        json!({ "name": "org/tool", "tags": ["1.0", "2.0"] })
    );
    let paged = get(&f.app, "/v2/org/tool/tags/list?ns=ghcr.io&n=1").await;
    assert_eq!(
        paged.header("link"),
        "</v2/org/tool/tags/list?n=1&last=1.0&ns=ghcr.io>; rel=\"next\""
    );
    let next = get(&f.app, &link_target(&paged).unwrap()).await;
    assert_eq!(next.json()["tags"], json!(["2.0"]));

    let blob = get(
        &f.app,
        &format!("/v2/org/tool/blobs/{}?ns=ghcr.io", Digest::of(b"ghcr blob")),
    )
    .await;
    assert_eq!(blob.body, &b"ghcr blob"[..]);

    get(&f.app, "/v2/library/alpine/manifests/3.20?ns=")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "NAME_INVALID");
}

#[tokio::test]
async fn the_default_namespace_is_configurable() {
    let f = fixture();
    let app = shoal_gateway::router(f.store.clone(), Some("ghcr.io".to_owned()));
    assert_eq!(
        get(&app, "/v2/org/tool/manifests/1.0").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&app, "/v2/_catalog").await.json(),
        json!({ "repositories": ["org/tool"] })
    );
    get(&app, "/v2/library/alpine/manifests/3.20")
        .await
        .assert_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
    assert_manifest(
        &get(&app, "/v2/library/alpine/manifests/3.20?ns=docker.io").await,
        &f.oci_manifest,
    );
}

#[tokio::test]
async fn nested_names_work_everywhere() {
    let f = fixture();
    let manifest = get(&f.app, "/v2/a/b/c/manifests/v1").await;
    assert_eq!(manifest.status, StatusCode::OK);
    assert_eq!(manifest.header("content-type"), OCI_MANIFEST);
    let blob = get(
        &f.app,
        &format!("/v2/a/b/c/blobs/{}", Digest::of(b"nested blob")),
    )
    .await;
    assert_eq!(blob.body, &b"nested blob"[..]);
    let tags = get(&f.app, "/v2/a/b/c/tags/list").await;
    assert_eq!(tags.json(), json!({ "name": "a/b/c", "tags": ["v1"] }));
    let digest: Digest = manifest.header("docker-content-digest").parse().unwrap();
    let referrers = get(&f.app, &format!("/v2/a/b/c/referrers/{digest}")).await;
    assert_eq!(referrers.json()["manifests"], json!([]));
}

#[tokio::test]
async fn invalid_names_are_name_invalid() {
    let f = fixture();
    let digest = f.layer_digest;
    for uri in [
        "/v2/UPPER/manifests/x".to_owned(),
        "/v2/Library/alpine/manifests/latest".to_owned(),
        format!("/v2/UPPER/blobs/{digest}"),
        "/v2/UPPER/tags/list".to_owned(),
        format!("/v2/UPPER/referrers/{digest}"),
        "/v2/a//b/tags/list".to_owned(),
        "/v2/-a/manifests/latest".to_owned(),
        "/v2/a%2Fb/manifests/latest".to_owned(),
        format!("/v2/{}/manifests/latest", "a".repeat(300)),
    ] {
        get(&f.app, &uri)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "NAME_INVALID");
    }
}

#[tokio::test]
async fn malformed_digests_are_digest_invalid_never_500() {
    let f = fixture();
    let upper = f
        .layer_digest
        .to_string()
        .to_ascii_uppercase()
        .replacen("SHA256", "sha256", 1);
    let sha512 = format!("sha512:{}", "a".repeat(128));
    let bad = [
        "sha256:abc",
        "sha256:",
        upper.as_str(),
        sha512.as_str(),
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        ":x",
    ];
    for digest in bad {
        for kind in ["blobs", "manifests", "referrers"] {
            let uri = format!("/v2/library/alpine/{kind}/{digest}");
            get(&f.app, &uri)
                .await
                .assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
            let headed = head(&f.app, &uri).await;
            assert_eq!(headed.status, StatusCode::BAD_REQUEST, "HEAD {uri}");
        }
    }
    // Not a digest at all on a blob path.
    get(&f.app, "/v2/library/alpine/blobs/latest")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    // Something that is neither a tag nor a digest on a manifest path is a missing manifest,
    // not a bad request: tests/conformance.rs.
}

// ---------------------------------------------------------------------------------------------
// Referrers.
// ---------------------------------------------------------------------------------------------

fn referrer_descriptor(manifest: &Manifest, artifact_type: &str) -> Value {
    json!({
        "mediaType": manifest.media_type,
        "digest": manifest.digest.to_string(),
        "size": manifest.bytes.len(),
        "artifactType": artifact_type,
    })
}

#[tokio::test]
async fn referrers_are_an_oci_index() {
    let f = fixture();
    let uri = format!("/v2/library/alpine/referrers/{}", f.oci_manifest.digest);
    let response = get(&f.app, &uri).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("content-type"), OCI_INDEX);
    assert_eq!(
        response.header("content-length"),
        response.body.len().to_string()
    );
    assert_eq!(
        response.header("docker-distribution-api-version"),
        "registry/2.0"
    );
    assert!(response.headers.get("oci-filters-applied").is_none());
    let body = response.json();
    assert_eq!(body["schemaVersion"], 2);
    assert_eq!(body["mediaType"], OCI_INDEX);
    let mut expected_sig = referrer_descriptor(&f.signature, SIG_TYPE);
    expected_sig["annotations"] = json!({ "org.example.signed-by": "alice" });
    let mut expected = vec![expected_sig, referrer_descriptor(&f.sbom, SBOM_TYPE)];
    expected.sort_by_key(|d| d["digest"].as_str().unwrap().to_owned());
    assert_eq!(body["manifests"], json!(expected));

    let headed = head(&f.app, &uri).await;
    assert_eq!(headed.status, StatusCode::OK);
    assert_eq!(headed.header("content-type"), OCI_INDEX);
    assert_eq!(
        headed.header("content-length"),
        response.header("content-length")
    );
    assert!(headed.body.is_empty());
}

#[tokio::test]
async fn referrers_filter_on_artifact_type() {
    let f = fixture();
    let base = format!("/v2/library/alpine/referrers/{}", f.oci_manifest.digest);
    let response = get(&f.app, &format!("{base}?artifactType={SIG_TYPE}")).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("oci-filters-applied"), "artifactType");
    let manifests = response.json()["manifests"].clone();
    assert_eq!(manifests.as_array().unwrap().len(), 1, "{manifests}");
    assert_eq!(manifests[0]["digest"], f.signature.digest.to_string());

    // `+` must be percent-encoded in a query.
    let response = get(
        &f.app,
        &format!("{base}?artifactType=application%2Fspdx%2Bjson"),
    )
    .await;
    assert_eq!(response.header("oci-filters-applied"), "artifactType");
    assert_eq!(
        response.json()["manifests"][0]["digest"],
        f.sbom.digest.to_string()
    );
    assert_eq!(response.json()["manifests"].as_array().unwrap().len(), 1);

    let response = get(&f.app, &format!("{base}?artifactType=application/none")).await;
    assert_eq!(response.header("oci-filters-applied"), "artifactType");
    assert_eq!(response.json()["manifests"], json!([]));
}

#[tokio::test]
async fn referrers_of_an_unreferenced_digest_are_an_empty_index() {
    let f = fixture();
    for digest in [f.oci_index.digest, Digest::of(b"not even stored")] {
        let response = get(&f.app, &format!("/v2/library/alpine/referrers/{digest}")).await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.header("content-type"), OCI_INDEX);
        assert_eq!(
            response.json(),
            json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [] })
        );
    }
    get(
        &f.app,
        &format!("/v2/library/nope/referrers/{}", f.oci_manifest.digest),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
}

// ---------------------------------------------------------------------------------------------
// Writes and source failures.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_write_is_405_unsupported_with_allow() {
    let f = fixture();
    let digest = f.layer_digest;
    let paths = [
        "/v2/".to_owned(),
        "/v2/library/alpine/manifests/3.20".to_owned(),
        format!("/v2/library/alpine/manifests/{}", f.oci_manifest.digest),
        format!("/v2/library/alpine/blobs/{digest}"),
        "/v2/library/alpine/blobs/uploads/".to_owned(),
        "/v2/library/alpine/blobs/uploads".to_owned(),
        format!("/v2/library/alpine/blobs/uploads/?digest={digest}"),
        format!("/v2/library/alpine/blobs/uploads/?mount={digest}&from=library/busybox"),
        "/v2/library/alpine/blobs/uploads/3f6e2c1a-uuid".to_owned(),
        "/v2/a/b/c/blobs/uploads/".to_owned(),
        "/v2/newrepo/blobs/uploads/".to_owned(),
        "/v2/library/alpine/tags/list".to_owned(),
        "/v2/_catalog".to_owned(),
        format!("/v2/library/alpine/referrers/{digest}"),
        // Writes are refused before the path is judged, so malformed ones are 405 too.
        "/v2/x/manifests/sha256:bad".to_owned(),
        "/v2/x/manifests/-bad".to_owned(),
        "/v2/UPPER/blobs/uploads/".to_owned(),
        "/v2/no/such/endpoint".to_owned(),
    ];
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        for path in &paths {
            let response = send(&f.app, request(method.clone(), path, &[])).await;
            let message = response.assert_error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED");
            assert!(message.contains("read-only"), "{method} {path}: {message}");
            assert_eq!(response.header("allow"), "GET, HEAD", "{method} {path}");
        }
    }
    // Uploads cannot even be inspected.
    get(&f.app, "/v2/library/alpine/blobs/uploads/3f6e2c1a-uuid")
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED");
    // Nothing was written: the manifest is unchanged.
    let response = get(&f.app, "/v2/library/alpine/manifests/3.20").await;
    assert_eq!(response.body, f.oci_manifest.bytes);
    assert!(f.store.reads().is_empty());
}

#[tokio::test]
async fn internal_failures_are_500_without_internals_and_unavailable_ones_say_why() {
    let f = fixture();
    f.store.fail_with(Failure::Internal);
    let uris = [
        "/v2/library/alpine/manifests/3.20".to_owned(),
        format!("/v2/library/alpine/manifests/{}", f.oci_manifest.digest),
        blob_uri(&f.layer_digest),
        "/v2/library/alpine/tags/list".to_owned(),
        "/v2/_catalog".to_owned(),
        format!("/v2/library/alpine/referrers/{}", f.oci_manifest.digest),
    ];
    for uri in &uris {
        let response = get(&f.app, uri).await;
        let message = response.assert_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN");
        let body = String::from_utf8_lossy(&response.body);
        assert!(
            !body.contains("secret") && !body.contains("exploded"),
            "{uri} leaked internals: {body}"
        );
        assert_eq!(message, "internal error");
    }

    // An unavailable source says why: the reason is written for the client (such as "upstream
    // docker.io cannot be reached"), unlike an internal failure's.
    f.store.fail_with(Failure::Unavailable);
    for uri in &uris {
        let response = get(&f.app, uri).await;
        let message = response.assert_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE");
        assert_eq!(
            message,
            format!("content is temporarily unavailable: {SECRET}"),
            "{uri}"
        );
    }
}

#[test]
fn fixture_manifests_parse_as_what_they_claim() {
    // Guards the fixture itself: every stored manifest is what its media type says.
    let f = fixture();
    for manifest in [
        &f.oci_manifest,
        &f.oci_index,
        &f.docker_amd64,
        &f.docker_list,
        &f.signature,
        &f.sbom,
    ] {
        let parsed = ParsedManifest::parse(&manifest.bytes, Some(&manifest.media_type)).unwrap();
        assert_eq!(parsed.media_type, manifest.media_type);
    }
    let list = ParsedManifest::parse(&f.docker_list.bytes, None).unwrap();
    assert_eq!(list.manifests[1].digest, f.docker_amd64.digest);
}
