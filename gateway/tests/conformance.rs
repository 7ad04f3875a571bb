//! The OCI distribution spec's pull workflow, case by case, written from the spec's text
//! (distribution-spec v1.1, "Pull", "Content Discovery" and the endpoint table end-1, end-2,
//! end-3, end-8a/b, end-12a). What `handlers.rs` already pins (Accept negotiation, ranges, the
//! `Link` walk, namespaces, malformed digests, writes) is not repeated here; these tests add the
//! rules a conformance suite checks and a whole pull as a client makes it.

mod common;

use common::*;
use http::StatusCode;
use serde_json::{Value, json};
use shoal_gateway::Manifest;
use shoal_protocol::media_type::{OCI_CONFIG, OCI_MANIFEST};
use shoal_protocol::{Digest, RepoName};

/// A manifest reference's tag grammar, from the spec: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
const TAG_BYTES_MAX: usize = 128;

/// A whole pull as a client makes it: end-1, then end-3 by tag (HEAD for the digest, as
/// containerd does), end-3 by that digest, then end-2 HEAD and GET for every blob the manifest
/// names, each body checked against the digest it was asked by.
#[tokio::test]
async fn a_whole_pull_follows_the_spec() {
    let f = fixture();
    // end-1: "If the response is 200 OK, then the registry implements this specification."
    assert_eq!(get(&f.app, "/v2/").await.status, StatusCode::OK);

    // end-3 HEAD: "must return 200 OK ... Docker-Content-Digest ... Content-Length: the exact
    // size of the stored object. A HEAD response must not include a response body."
    let by_tag = head_with(
        &f.app,
        "/v2/library/alpine/manifests/3.20",
        &[("accept", OCI_MANIFEST)],
    )
    .await;
    assert_eq!(by_tag.status, StatusCode::OK, "{by_tag:?}");
    assert!(by_tag.body.is_empty());
    let digest: Digest = by_tag
        .header("docker-content-digest")
        .parse()
        .expect("Docker-Content-Digest is a digest");
    let size: usize = by_tag
        .header("content-length")
        .parse()
        .expect("Content-Length is a number");

    // end-3 GET by digest: "the manifest, byte-for-byte as stored"; the client "should verify
    // that the returned manifest matches that digest".
    let manifest = get_with(
        &f.app,
        &format!("/v2/library/alpine/manifests/{digest}"),
        &[("accept", OCI_MANIFEST)],
    )
    .await;
    assert_eq!(manifest.status, StatusCode::OK);
    assert_eq!(Digest::of(&manifest.body), digest);
    assert_eq!(manifest.body.len(), size);
    assert_content_type_matches_the_document(&manifest);

    let document = manifest.json();
    let blobs: Vec<(Digest, u64)> = std::iter::once(&document["config"])
        .chain(document["layers"].as_array().expect("layers").iter())
        .map(|descriptor| {
            let digest = descriptor["digest"].as_str().expect("a digest string");
            let size = descriptor["size"].as_u64().expect("a size");
            (digest.parse().expect("a valid digest"), size)
        })
        .collect();
    assert_eq!(blobs.len(), 2);
    for (digest, size) in blobs {
        let uri = format!("/v2/library/alpine/blobs/{digest}");
        // end-2 HEAD.
        let headed = head(&f.app, &uri).await;
        assert_eq!(headed.status, StatusCode::OK, "HEAD {uri}");
        assert_eq!(headed.header("content-length"), size.to_string());
        assert_eq!(headed.header("docker-content-digest"), digest.to_string());
        assert!(headed.body.is_empty());
        // end-2 GET: "Docker-Content-Digest ... must match the digest of the returned blob".
        let fetched = get(&f.app, &uri).await;
        assert_eq!(fetched.status, StatusCode::OK, "GET {uri}");
        assert_eq!(Digest::of(&fetched.body), digest);
        assert_eq!(fetched.header("docker-content-digest"), digest.to_string());
    }
}

/// "Content-Type: <manifest media type>. Registries should not include parameters ... If the
/// manifest contains a mediaType field, clients should reject the response unless it matches."
fn assert_content_type_matches_the_document(response: &Response) {
    let content_type = response.header("content-type");
    assert!(!content_type.contains(';'), "parameters in {content_type}");
    if let Some(media_type) = response.json()["mediaType"].as_str() {
        assert_eq!(content_type, media_type);
    }
}

#[tokio::test]
async fn every_manifest_kind_has_a_content_type_clients_accept() {
    let f = fixture();
    let all = [
        &f.oci_manifest,
        &f.oci_index,
        &f.docker_amd64,
        &f.docker_list,
        &f.signature,
        &f.sbom,
    ];
    for manifest in all {
        let response = get_with(
            &f.app,
            &format!("/v2/library/alpine/manifests/{}", manifest.digest),
            &[("accept", &manifest.media_type)],
        )
        .await;
        assert_manifest(&response, manifest);
        assert_content_type_matches_the_document(&response);
    }
}

/// "`<reference>` must be one of: a digest, or a tag matching `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
/// No other formats are allowed." and end-3 lists one failure: "404 Not Found if the manifest
/// does not exist". A reference outside the grammar names no manifest, so it is a missing
/// manifest (the conformance suite asks for `.INVALID_MANIFEST_NAME` and expects 404), while a
/// name outside the name grammar stays NAME_INVALID and an unknown repository NAME_UNKNOWN.
#[tokio::test]
async fn references_that_are_not_tags_are_manifest_unknown() {
    let f = fixture();
    let too_long = "a".repeat(TAG_BYTES_MAX + 1);
    for reference in [
        ".INVALID_MANIFEST_NAME",
        "-leading-dash",
        "a+b",
        "tag%20with%20space",
        too_long.as_str(),
    ] {
        let uri = format!("/v2/library/alpine/manifests/{reference}");
        get(&f.app, &uri)
            .await
            .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
        let headed = head(&f.app, &uri).await;
        assert_eq!(headed.status, StatusCode::NOT_FOUND, "HEAD {uri}");
        assert!(headed.body.is_empty(), "HEAD {uri}");

        get(
            &f.app,
            &format!("/v2/library/unknown/manifests/{reference}"),
        )
        .await
        .assert_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
        get(&f.app, &format!("/v2/Upper/manifests/{reference}"))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "NAME_INVALID");
    }
}

/// The edges of the tag grammar resolve: a leading underscore, every allowed character, and
/// exactly 128 characters.
#[tokio::test]
async fn tags_at_the_edges_of_the_grammar_are_served() {
    let f = fixture();
    let longest = format!("A{}", "b".repeat(TAG_BYTES_MAX - 1));
    for tag in ["_private", "Mixed.Case-1_x", "9", longest.as_str()] {
        f.store.tag(&f.alpine, tag, f.oci_manifest.digest);
        let response = get_with(
            &f.app,
            &format!("/v2/library/alpine/manifests/{tag}"),
            &[("accept", OCI_MANIFEST)],
        )
        .await;
        assert_manifest(&response, &f.oci_manifest);
        assert_eq!(response.body, f.oci_manifest.bytes, "{tag}");
    }
}

/// "If the blob does not exist in the repository, the registry must return 404" — also when
/// the repository itself is unknown, and for HEAD.
#[tokio::test]
async fn blobs_of_unknown_repositories_are_404() {
    let f = fixture();
    let uri = format!("/v2/library/unknown/blobs/{}", f.layer_digest);
    let response = get(&f.app, &uri).await;
    assert_eq!(response.status, StatusCode::NOT_FOUND, "{response:?}");
    let code = response.json()["errors"][0]["code"].clone();
    assert!(
        code == "BLOB_UNKNOWN" || code == "NAME_UNKNOWN",
        "a 404 code of the spec: {code}"
    );
    let headed = head(&f.app, &uri).await;
    assert_eq!(headed.status, StatusCode::NOT_FOUND);
    assert!(headed.body.is_empty());
}

/// The spec's "Resumable Pull" use case: "the client keeps the partial data and uses http
/// Range requests to avoid downloading repeated data". Fetching a blob in pieces, each asking
/// for `bytes=<received>-<received+n>` and the last for `bytes=<received>-`, rebuilds exactly
/// the blob.
#[tokio::test]
async fn a_blob_resumed_in_pieces_rebuilds_exactly() {
    let f = fixture();
    let uri = format!("/v2/library/alpine/blobs/{}", f.layer_digest);
    let mut received = Vec::new();
    while received.len() < 70 {
        let range = format!("bytes={}-{}", received.len(), received.len() + 32);
        let piece = get_with(&f.app, &uri, &[("range", &range)]).await;
        assert_eq!(piece.status, StatusCode::PARTIAL_CONTENT, "{range}");
        received.extend_from_slice(&piece.body);
    }
    let rest = get_with(
        &f.app,
        &uri,
        &[("range", &format!("bytes={}-", received.len()))],
    )
    .await;
    assert_eq!(rest.status, StatusCode::PARTIAL_CONTENT);
    received.extend_from_slice(&rest.body);
    assert_eq!(received, f.layer);
    assert_eq!(Digest::of(&received), f.layer_digest);
}

fn tagged_repo(f: &Fixture, tags: &[&str]) -> RepoName {
    let repo = repo("docker.io", "conformance/tags");
    let manifest: Manifest = f.store.add_manifest(
        &repo,
        OCI_MANIFEST,
        &image(OCI_MANIFEST, OCI_CONFIG, b"{}", b"t", None),
        None,
    );
    for tag in tags {
        f.store.tag(&repo, tag, manifest.digest);
    }
    repo
}

fn tags_of(response: &Response) -> Value {
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    response.json()["tags"].clone()
}

/// end-8a: "the tags MUST be sorted in lexical ... or ASCIIbetical order (as defined by Go's
/// sort.Strings)": byte order, so digits, then upper case, then `_`, then lower case.
#[tokio::test]
async fn tags_are_listed_in_asciibetical_order() {
    let f = fixture();
    tagged_repo(&f, &["b", "_u", "B", "a", "1.0", "A", "10"]);
    let response = get(&f.app, "/v2/conformance/tags/tags/list").await;
    assert_eq!(
        response.json(),
        json!({ "name": "conformance/tags", "tags": ["1.0", "10", "A", "B", "_u", "a", "b"] })
    );
}

/// end-8b: "If n=0, the registry must return an empty list and must not include a Link
/// header"; "`<tagname>` itself is not included", and `last` need not name an existing tag:
/// the page holds the tags after it in the same order.
#[tokio::test]
async fn n_and_last_follow_the_spec_at_their_edges() {
    let f = fixture();
    tagged_repo(&f, &["a", "c", "e", "g"]);
    let base = "/v2/conformance/tags/tags/list";

    let zero = get(&f.app, &format!("{base}?n=0")).await;
    assert_eq!(tags_of(&zero), json!([]));
    assert!(zero.headers.get("link").is_none(), "{zero:?}");

    assert_eq!(
        tags_of(&get(&f.app, &format!("{base}?n=2&last=b")).await),
        json!(["c", "e"])
    );
    assert_eq!(
        tags_of(&get(&f.app, &format!("{base}?last=e")).await),
        json!(["g"])
    );
    // "In every other situation, it must return exactly <int> tags."
    let page = get(&f.app, &format!("{base}?n=3")).await;
    assert_eq!(tags_of(&page), json!(["a", "c", "e"]));
    assert!(page.headers.get("link").is_some(), "more follow: {page:?}");
    // More than there are: all of them, and nothing next.
    let all = get(&f.app, &format!("{base}?n=100")).await;
    assert_eq!(tags_of(&all), json!(["a", "c", "e", "g"]));
    assert!(all.headers.get("link").is_none());
}

/// end-8a: "If the repository exists, the registry MUST return 200 OK. The list of tags MAY be
/// empty." A repository holding only untagged manifests lists no tags rather than failing.
#[tokio::test]
async fn a_repository_without_tags_lists_an_empty_list() {
    let f = fixture();
    tagged_repo(&f, &[]);
    let response = get(&f.app, "/v2/conformance/tags/tags/list").await;
    assert_eq!(
        response.json(),
        json!({ "name": "conformance/tags", "tags": [] })
    );
}
