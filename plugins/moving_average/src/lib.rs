//! Moving average: the average of the last `window` readings of each topic, kept in
//! the node's key/value state, so the window survives restarts of the gateway.
//!
//! config: `{ field: "value", window: 5 }` (`field: ""` reads a bare number; `window`
//! from 1 to 1000).
//! out: `{"avg": 21.5, "n": 2, "value": 22}` on the input's topic: the average over the
//! `n` readings held (fewer than `window` at first) and the newest reading.
//! A message without a number at `field` is dropped.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use headwater_plugin::{Error, Global, Message, emit, json, kv, round};

const MAX_WINDOW: usize = 1000;

struct Config {
    field: String,
    window: usize,
}

static CONFIG: Global<Option<Config>> = Global::new(None);

fn init(config: &[u8]) -> Result<(), Error> {
    let window = match json::get(config, "window") {
        None => 5,
        Some(json::Value::Number(n)) if n >= 1.0 && n <= MAX_WINDOW as f64 => n as usize,
        Some(_) => return Err(Error::fail("window must be a number from 1 to 1000")),
    };
    let field = json::get_str(config, "field").unwrap_or_else(|| String::from("value"));
    CONFIG.set(Some(Config { field, window }));
    Ok(())
}

/// The state key of a topic; long topics are hashed (FNV-1a) to fit the key limit.
fn key_of(topic: &str) -> String {
    if topic.len() + 2 <= kv::MAX_KEY_LEN {
        return format!("w/{topic}");
    }
    let hash = topic.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("h/{hash:016x}")
}

fn on_message(msg: &Message) -> Result<(), Error> {
    let (field, window) = CONFIG.with(|config| match config {
        Some(config) => (config.field.clone(), config.window),
        None => (String::from("value"), 5),
    });
    let Some(value) = json::get_f64(msg.payload, &field) else {
        return Ok(()); // nothing to average: dropped
    };
    let key = key_of(msg.topic);
    let mut values: Vec<f64> = kv::get(&key)?
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|chunk| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(chunk);
            f64::from_le_bytes(bytes)
        })
        .collect();
    values.push(value);
    // A smaller window in the config after a restart keeps only the newest readings.
    let excess = values.len().saturating_sub(window);
    values.drain(..excess);
    let stored: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    kv::set(&key, &stored)?;

    let avg = values.iter().sum::<f64>() / values.len() as f64;
    let out = json::Object::new()
        .number("avg", round(avg, 3))
        .integer("n", values.len() as i64)
        .number("value", value)
        .finish();
    emit(&Message::new(out.as_bytes()))?;
    Ok(())
}

headwater_plugin::plugin!(init = init, on_message = on_message);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use headwater_plugin::testing;

    #[test]
    fn the_window_slides_per_topic_through_the_state() {
        testing::reset();
        assert_eq!(testing::init(init, r#"{"window": 3}"#).code, 0);
        let mut last = String::new();
        for v in [1, 2, 3, 10] {
            let payload = format!(r#"{{"value":{v}}}"#);
            let out = testing::run(
                on_message,
                &Message::new(payload.as_bytes()).with_topic("a"),
            );
            last = out.emits[0].payload_str();
        }
        assert_eq!(last, r#"{"avg":5,"n":3,"value":10}"#);
        let other = testing::run(on_message, &Message::new(br#"{"value":4}"#).with_topic("b"));
        assert_eq!(other.emits[0].payload_str(), r#"{"avg":4,"n":1,"value":4}"#);
        assert_eq!(testing::stored("w/a").map(|v| v.len()), Some(24));
        assert!(
            testing::run(on_message, &Message::new(b"{}"))
                .emits
                .is_empty()
        );
        assert!(key_of(&"x".repeat(300)).len() <= kv::MAX_KEY_LEN);
    }
}
