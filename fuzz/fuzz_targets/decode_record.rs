//! Decodes arbitrary bytes as a stored message record. Whatever decodes must encode
//! again without a panic (`encode_record` expects success) and decode back to the
//! same message.

#![no_main]

use headwater::broker::codec::{decode_record, encode_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(publish) = decode_record(data) else {
        return;
    };
    let record = encode_record(&publish);
    let back = decode_record(&record);
    assert_eq!(back.as_ref(), Some(&publish), "record {record:02x?}");
});
