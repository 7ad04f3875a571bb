//! Signing, verification and the book, including hostile inputs.

use std::collections::BTreeSet;

use libp2p_identity::{Keypair, PeerId};
use proptest::prelude::*;

use super::*;
use crate::media_type::OCI_MANIFEST;

fn keypair(seed: u8) -> Keypair {
    Keypair::ed25519_from_bytes([seed; 32]).expect("32 bytes make an ed25519 key")
}

fn announcement(tag: &str, sequence: u64, time_unix_ms: u64) -> Announcement {
    let manifest = Digest::of(format!("manifest {tag} {sequence}").as_bytes());
    let layer = Digest::of(b"layer");
    let mut announcement = Announcement {
        repository: "docker.io/library/alpine".to_owned(),
        tag: tag.parse().unwrap(),
        manifest,
        media_type: OCI_MANIFEST.to_owned(),
        size: 500,
        sequence,
        time_unix_ms,
        index_roots: vec![(layer, [2; 32]), (manifest, [1; 32])],
    };
    announcement.normalize_roots();
    announcement
}

fn verified(key: &Keypair, announcement: &Announcement) -> VerifiedAnnouncement {
    SignedAnnouncement::sign(announcement, key)
        .unwrap()
        .verify()
        .unwrap()
}

#[test]
fn signed_announcements_verify_and_name_their_publisher() {
    let key = keypair(1);
    let a = announcement("3.20", 1, 1000);
    let signed = SignedAnnouncement::sign(&a, &key).unwrap();
    let frame = signed.encode().unwrap();
    let decoded = SignedAnnouncement::decode(&frame).unwrap();
    assert_eq!(decoded, signed);
    let v = decoded.verify().unwrap();
    assert_eq!(v.announcement(), &a);
    assert_eq!(v.publisher(), &key.public().to_peer_id());
    assert_eq!(v.signed(), &signed);
    assert_eq!(v.announcement().index_root(&a.manifest), Some([1; 32]));
    assert_eq!(v.announcement().index_root(&Digest::of(b"nope")), None);
}

#[test]
fn tampering_with_any_part_breaks_verification() {
    let key = keypair(1);
    let signed = SignedAnnouncement::sign(&announcement("v1", 1, 1000), &key).unwrap();

    let mut bad_signature = signed.clone();
    bad_signature.signature[10] ^= 1;
    assert!(matches!(
        bad_signature.verify(),
        Err(AnnounceError::BadSignature)
    ));

    let mut empty_signature = signed.clone();
    empty_signature.signature.clear();
    assert!(matches!(
        empty_signature.verify(),
        Err(AnnounceError::BadSignature)
    ));

    // Another valid key in the publisher field: the signature is not theirs.
    let mut wrong_publisher = signed.clone();
    wrong_publisher.publisher = keypair(2).public().encode_protobuf();
    assert!(matches!(
        wrong_publisher.verify(),
        Err(AnnounceError::BadSignature)
    ));

    let mut garbage_key = signed.clone();
    garbage_key.publisher = vec![1, 2, 3];
    assert!(matches!(
        garbage_key.verify(),
        Err(AnnounceError::PublisherKey(Some(_)))
    ));

    for at in [0, 1, signed.payload.len() / 2, signed.payload.len() - 1] {
        let mut tampered = signed.clone();
        tampered.payload[at] ^= 0x40;
        assert!(
            matches!(tampered.verify(), Err(AnnounceError::BadSignature)),
            "{at}"
        );
    }

    // A signature over the bare payload, without the domain prefix, is refused.
    let mut undomained = signed.clone();
    undomained.signature = key.sign(&signed.payload).unwrap();
    assert!(matches!(
        undomained.verify(),
        Err(AnnounceError::BadSignature)
    ));
}

#[test]
fn oversized_parts_are_refused_before_any_work() {
    let key = keypair(1);
    let signed = SignedAnnouncement::sign(&announcement("v1", 1, 1000), &key).unwrap();

    let mut big_payload = signed.clone();
    big_payload.payload = vec![WIRE_FIRST_BYTE; ANNOUNCEMENT_BYTES_MAX + 1];
    assert!(matches!(
        big_payload.verify(),
        Err(AnnounceError::TooLarge { bytes, .. }) if bytes == ANNOUNCEMENT_BYTES_MAX + 1
    ));
    let mut big_key = signed.clone();
    big_key.publisher = vec![0; PUBLISHER_KEY_BYTES_MAX + 1];
    assert!(matches!(
        big_key.verify(),
        Err(AnnounceError::PublisherKey(None))
    ));
    let mut big_signature = signed;
    big_signature.signature = vec![0; SIGNATURE_BYTES_MAX + 1];
    assert!(matches!(
        big_signature.verify(),
        Err(AnnounceError::BadSignature)
    ));

    // Signing refuses an announcement whose encoding exceeds the limit.
    let mut huge = announcement("v1", 1, 1000);
    huge.index_roots = (0u32..5000)
        .map(|i| (Digest::of(&i.to_le_bytes()), [0; 32]))
        .collect();
    huge.index_roots.push((huge.manifest, [1; 32]));
    huge.normalize_roots();
    assert!(matches!(
        SignedAnnouncement::sign(&huge, &key),
        Err(AnnounceError::TooLarge { .. })
    ));
    // And a frame beyond the gossip limit does not even decode.
    let frame = vec![crate::wire::WIRE_VERSION; SIGNED_ANNOUNCEMENT_BYTES_MAX + 1];
    assert!(SignedAnnouncement::decode(&frame).is_err());
}

const WIRE_FIRST_BYTE: u8 = crate::wire::WIRE_VERSION;

#[test]
fn invalid_fields_are_refused_even_when_signed() {
    let key = keypair(1);
    type Expect = fn(&AnnounceError) -> bool;
    let cases: Vec<(Announcement, Expect)> = vec![
        (
            Announcement {
                repository: "alpine".to_owned(),
                ..announcement("v1", 1, 1)
            },
            |e| matches!(e, AnnounceError::Repository { .. }),
        ),
        (
            Announcement {
                repository: "Docker.io/library/alpine".to_owned(),
                ..announcement("v1", 1, 1)
            },
            |e| matches!(e, AnnounceError::Repository { .. }),
        ),
        (
            Announcement {
                media_type: "text/plain".to_owned(),
                ..announcement("v1", 1, 1)
            },
            |e| matches!(e, AnnounceError::MediaType(_)),
        ),
        (
            Announcement {
                size: 0,
                ..announcement("v1", 1, 1)
            },
            |e| matches!(e, AnnounceError::ManifestSize(0)),
        ),
        (
            Announcement {
                size: MANIFEST_BYTES_MAX as u64 + 1,
                ..announcement("v1", 1, 1)
            },
            |e| matches!(e, AnnounceError::ManifestSize(_)),
        ),
        (
            Announcement {
                index_roots: vec![(Digest::of(b"layer"), [0; 32])],
                ..announcement("v1", 1, 1)
            },
            |e| matches!(e, AnnounceError::MissingManifestRoot(_)),
        ),
        (
            {
                let mut a = announcement("v1", 1, 1);
                a.index_roots.reverse();
                a
            },
            |e| matches!(e, AnnounceError::UnsortedRoots),
        ),
    ];
    for (bad, expected) in cases {
        let error = SignedAnnouncement::sign(&bad, &key).unwrap_err();
        assert!(expected(&error), "sign: {error:?}");
        // Signed anyway by a publisher that skips validation: verify still refuses.
        let payload = crate::wire::encode(&bad).unwrap();
        let signed = SignedAnnouncement {
            signature: key.sign(&signed_message(&payload)).unwrap(),
            payload,
            publisher: key.public().encode_protobuf(),
        };
        let error = signed.verify().unwrap_err();
        assert!(expected(&error), "verify: {error:?}");
    }
}

#[test]
fn book_keeps_the_newest_sequence_per_publisher() {
    let key = keypair(1);
    let publisher = key.public().to_peer_id();
    let mut book = AnnouncementBook::new();
    let tag: Tag = "v1".parse().unwrap();
    let trust = |p: &PeerId| *p == publisher;

    assert_eq!(
        book.insert(verified(&key, &announcement("v1", 5, 100)), true),
        InsertOutcome::Accepted
    );
    assert_eq!(
        book.insert(verified(&key, &announcement("v1", 5, 100)), true),
        InsertOutcome::Duplicate
    );
    assert_eq!(
        book.insert(verified(&key, &announcement("v1", 4, 900)), true),
        InsertOutcome::Stale,
        "a lower sequence loses even with a later time"
    );
    // Same sequence, different content: an equivocating publisher does not get to switch.
    let mut conflicting = announcement("v1", 5, 100);
    conflicting.size = 501;
    assert_eq!(
        book.insert(verified(&key, &conflicting), true),
        InsertOutcome::Stale
    );
    assert_eq!(
        book.resolve("docker.io/library/alpine", &tag, trust)
            .unwrap()
            .sequence,
        5
    );
    assert_eq!(
        book.insert(verified(&key, &announcement("v1", 6, 50)), true),
        InsertOutcome::Accepted
    );
    let resolved = book
        .resolve("docker.io/library/alpine", &tag, trust)
        .unwrap();
    assert_eq!(resolved.sequence, 6);
    assert_eq!(book.len(), 1);
    assert_eq!(
        book.counters(),
        BookCounters {
            accepted: 2,
            duplicate: 1,
            stale: 2,
            untrusted: 0,
            evicted: 0
        }
    );
}

#[test]
fn resolution_prefers_latest_time_among_trusted_publishers() {
    let (a, b, c) = (keypair(1), keypair(2), keypair(3));
    let (pa, pb) = (a.public().to_peer_id(), b.public().to_peer_id());
    let tag: Tag = "latest".parse().unwrap();
    let repo = "docker.io/library/alpine";
    let mut book = AnnouncementBook::new();
    book.insert(verified(&a, &announcement("latest", 100, 2000)), true);
    book.insert(verified(&b, &announcement("latest", 1, 3000)), true);

    let both = |p: &PeerId| *p == pa || *p == pb;
    let resolved = book.resolve(repo, &tag, both).unwrap();
    assert_eq!((resolved.time_unix_ms, resolved.sequence), (3000, 1));
    // Revoking trust in b falls back to a without touching the book.
    let only_a = |p: &PeerId| *p == pa;
    assert_eq!(book.resolve(repo, &tag, only_a).unwrap().sequence, 100);
    assert!(book.resolve(repo, &tag, |_| false).is_none());
    assert!(
        book.resolve("docker.io/library/other", &tag, both)
            .is_none()
    );

    // An untrusted publisher is never stored and never changes resolution, however new.
    let before = book.resolve(repo, &tag, both).cloned();
    assert_eq!(
        book.insert(verified(&c, &announcement("latest", 999, 99_999)), false),
        InsertOutcome::Untrusted
    );
    assert_eq!(book.resolve(repo, &tag, both).cloned(), before);
    assert_eq!(book.resolve(repo, &tag, |_| true).cloned(), before);
    assert_eq!(book.counters().untrusted, 1);
    assert_eq!(book.len(), 2);
    assert_eq!(book.tags(repo, both), vec![tag.clone()]);
    assert!(book.tags(repo, |_| false).is_empty());
    assert_eq!(book.get(repo, &tag, &pa).unwrap().publisher(), &pa);
}

#[test]
fn a_full_book_evicts_the_oldest() {
    let key = keypair(1);
    let mut book = AnnouncementBook::with_capacity(3);
    for (i, time) in [(1, 500), (2, 100), (3, 300)] {
        let outcome = book.insert(
            verified(&key, &announcement(&format!("t{i}"), 1, time)),
            true,
        );
        assert_eq!(outcome, InsertOutcome::Accepted);
    }
    // Older than everything: refused.
    assert_eq!(
        book.insert(verified(&key, &announcement("t4", 1, 50)), true),
        InsertOutcome::Evicted
    );
    // Newer: t2 (time 100) makes room.
    assert_eq!(
        book.insert(verified(&key, &announcement("t5", 1, 400)), true),
        InsertOutcome::Accepted
    );
    let tags: BTreeSet<String> = book
        .all()
        .map(|v| v.announcement().tag.to_string())
        .collect();
    assert_eq!(
        tags,
        ["t1", "t3", "t5"].map(String::from).into_iter().collect()
    );
    assert_eq!(book.len(), 3);
    assert_eq!(book.counters().evicted, 2);
}

#[test]
fn pages_cover_the_book_exactly_once() {
    let keys: Vec<Keypair> = (1..=3).map(keypair).collect();
    let mut book = AnnouncementBook::new();
    for key in &keys {
        for i in 0..7 {
            book.insert(
                verified(key, &announcement(&format!("t{i}"), 1, 1000 + i)),
                true,
            );
        }
    }
    let one_size = {
        let s = book.all().next().unwrap().signed();
        s.payload.len() + s.publisher.len() + s.signature.len() + 27
    };
    for per_page in [1, 2, 5, 21, 100] {
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let page = book.page(cursor.as_ref(), per_page * one_size);
            assert!(!page.announcements.is_empty());
            assert!(page.announcements.len() <= per_page);
            seen.extend(page.announcements);
            pages += 1;
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let all: Vec<SignedAnnouncement> = book.all().map(|v| v.signed().clone()).collect();
        assert_eq!(seen, all, "{per_page}");
        assert_eq!(pages, 21usize.div_ceil(per_page));
    }
    // A hostile cursor gives an empty last page, not a panic.
    let bad = AnnouncementCursor {
        repository: "x".into(),
        tag: "y".into(),
        publisher: vec![9; 3],
    };
    let page = book.page(Some(&bad), 1000);
    assert!(page.announcements.is_empty() && page.next.is_none());
    // An empty book: one empty page.
    let page = AnnouncementBook::new().page(None, 1000);
    assert!(page.announcements.is_empty() && page.next.is_none());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn verifying_arbitrary_signed_announcements_never_panics(
        signed in crate::testing::arbitrary_signed()
    ) {
        prop_assert!(signed.verify().is_err());
    }

    /// Whatever order announcements arrive in, the book ends with the highest sequence of each
    /// (publisher, tag), and resolution follows time, then sequence.
    #[test]
    fn book_converges_regardless_of_arrival_order(
        events in proptest::collection::vec((0u8..3, 0u8..3, 0u64..20), 1..40)
    ) {
        let keys: Vec<Keypair> = (1..=3).map(keypair).collect();
        let mut forward = AnnouncementBook::new();
        let mut backward = AnnouncementBook::new();
        let made: Vec<VerifiedAnnouncement> = events
            .iter()
            .map(|&(k, t, seq)| {
                // Time derives from the sequence so one (publisher, tag, seq) is one payload.
                verified(&keys[k as usize], &announcement(&format!("t{t}"), seq, seq * 10))
            })
            .collect();
        for v in &made { forward.insert(v.clone(), true); }
        for v in made.iter().rev() { backward.insert(v.clone(), true); }
        let f: Vec<_> = forward.all().cloned().collect();
        let b: Vec<_> = backward.all().cloned().collect();
        prop_assert_eq!(&f, &b);
        for v in &f {
            let max_seq = made
                .iter()
                .filter(|m| m.publisher() == v.publisher() && m.announcement().tag == v.announcement().tag)
                .map(|m| m.announcement().sequence)
                .max();
            prop_assert_eq!(Some(v.announcement().sequence), max_seq);
        }
        for t in 0..3 {
            let tag: Tag = format!("t{t}").parse().unwrap();
            let resolved = forward.resolve("docker.io/library/alpine", &tag, |_| true);
            let best = made
                .iter()
                .filter(|m| m.announcement().tag == tag)
                .map(|m| (m.announcement().time_unix_ms, m.announcement().sequence))
                .max();
            prop_assert_eq!(resolved.map(|a| (a.time_unix_ms, a.sequence)), best);
        }
    }
}
