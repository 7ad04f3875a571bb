//! A gossiped announcement frame, as `node/src/announce.rs` takes it: decode, then verify the
//! publisher key and signature, then decode and validate the signed payload. Random bytes
//! almost never carry a good signature, so the payload decoder is also driven directly with
//! the payload of every frame that decodes; a payload that validates must sign and verify
//! back to itself.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use libp2p_identity::Keypair;
use shoal_protocol::announce::{ANNOUNCEMENT_BYTES_MAX, Announcement};
use shoal_protocol::{SignedAnnouncement, wire};

fn keypair() -> &'static Keypair {
    static KEYPAIR: OnceLock<Keypair> = OnceLock::new();
    KEYPAIR.get_or_init(|| Keypair::ed25519_from_bytes([7; 32]).expect("a valid ed25519 seed"))
}

fuzz_target!(|frame: &[u8]| {
    let Ok(signed) = SignedAnnouncement::decode(frame) else {
        return;
    };
    if let Ok(verified) = signed.verify() {
        assert_eq!(verified.signed(), &signed);
        verified
            .announcement()
            .validate()
            .expect("verified announcements are valid");
    }
    let Ok(announcement) = wire::decode::<Announcement>(&signed.payload, ANNOUNCEMENT_BYTES_MAX)
    else {
        return;
    };
    if announcement.validate().is_err() {
        return;
    }
    let resigned = SignedAnnouncement::sign(&announcement, keypair()).expect("a valid one signs");
    let verified = resigned.verify().expect("our own signature verifies");
    assert_eq!(verified.announcement(), &announcement);
    assert_eq!(
        SignedAnnouncement::decode(&resigned.encode().expect("encodes")).expect("decodes"),
        resigned
    );
});
