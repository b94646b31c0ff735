//! `cargo fuzz run stomp_frame`: the STOMP decoder on arbitrary bytes never panics,
//! stays within its limits, and every frame it decodes encodes back to an equal one.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use platform_queue::stomp::frame::{Decoded, Frame, decode};

fn without_length(mut f: Frame) -> Frame {
    f.headers.retain(|(k, _)| k != "content-length");
    f
}

fuzz_target!(|input: &[u8]| {
    let mut buf = BytesMut::from(input);
    while let Ok(Some(d)) = decode(&mut buf) {
        let Decoded::Frame(f) = d else { continue };
        // CONNECT and CONNECTED carry their headers unescaped, so not every value survives.
        if matches!(f.command.as_str(), "CONNECT" | "CONNECTED" | "STOMP") {
            continue;
        }
        let mut again = BytesMut::new();
        f.encode(&mut again);
        match decode(&mut again) {
            Ok(Some(Decoded::Frame(back))) => assert_eq!(without_length(back), without_length(f)),
            other => panic!("{f:?} did not round-trip: {other:?}"),
        }
    }
});
