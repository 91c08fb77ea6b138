//! Energy-pulse converter: turns a meter's cumulative pulse count into energy (kWh)
//! and the average power (W) since the previous reading of the same topic.
//!
//! config: `{ wh_per_pulse: 1.0, field: "pulses" }` (`field: ""` reads a bare number).
//! in:  `{"pulses": 12345, "ts": 1700000000000}` (`ts` in ms is optional: the
//!      message's timestamp otherwise)
//! out: `{"pulses": 12345, "kwh": 12.345, "w": 1800}`; `w` is absent on the first
//!      reading of a topic, after a counter reset and when no time passed.
//! A message without the count fails with code 3. The last reading of each topic is
//! kept in the node's key/value state, so power is right across restarts.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::String;

use headwater_plugin::{Error, Global, Message, emit, json, kv, round};

struct Config {
    wh_per_pulse: f64,
    field: String,
}

static CONFIG: Global<Option<Config>> = Global::new(None);

fn init(config: &[u8]) -> Result<(), Error> {
    let wh_per_pulse = match json::get(config, "wh_per_pulse") {
        None => 1.0,
        Some(json::Value::Number(wh)) if wh > 0.0 => wh,
        Some(_) => return Err(Error::fail("wh_per_pulse must be a number above 0")),
    };
    let field = match json::get(config, "field") {
        None => String::from("pulses"),
        Some(json::Value::String(_)) => json::get_str(config, "field").unwrap_or_default(),
        Some(_) => {
            return Err(Error::fail(
                "field must be a string (\"\" for a bare number)",
            ));
        }
    };
    CONFIG.set(Some(Config {
        wh_per_pulse,
        field,
    }));
    Ok(())
}

/// The previous reading: count and time, as 16 little-endian bytes.
fn last_reading(key: &str) -> Result<Option<(f64, i64)>, Error> {
    let Some(bytes) = kv::get(key)? else {
        return Ok(None);
    };
    if bytes.len() != 16 {
        return Ok(None);
    }
    let mut count = [0; 8];
    let mut at = [0; 8];
    count.copy_from_slice(&bytes[..8]);
    at.copy_from_slice(&bytes[8..]);
    Ok(Some((f64::from_le_bytes(count), i64::from_le_bytes(at))))
}

fn on_message(msg: &Message) -> Result<(), Error> {
    let (wh_per_pulse, field) = CONFIG.with(|config| match config {
        Some(config) => (config.wh_per_pulse, config.field.clone()),
        None => (1.0, String::from("pulses")),
    });
    let Some(pulses) = json::get_f64(msg.payload, &field) else {
        return Err(Error::with_code(3));
    };
    let at = json::get_f64(msg.payload, "ts")
        .map(|ts| ts as i64)
        .unwrap_or(msg.timestamp_ms);

    let key = format!("last/{}", msg.topic);
    let key = if key.len() > kv::MAX_KEY_LEN {
        &key[..key.floor_char_boundary(kv::MAX_KEY_LEN)]
    } else {
        &key[..]
    };
    let previous = last_reading(key)?;
    let mut record = [0u8; 16];
    record[..8].copy_from_slice(&pulses.to_le_bytes());
    record[8..].copy_from_slice(&at.to_le_bytes());
    kv::set(key, &record)?;

    let mut out = json::Object::new()
        .number("pulses", pulses)
        .number("kwh", round(pulses * wh_per_pulse / 1000.0, 6));
    if let Some((last_pulses, last_at)) = previous {
        let elapsed_ms = at - last_at;
        // A smaller count is a counter reset (meter restarted): a new baseline.
        if pulses >= last_pulses && elapsed_ms > 0 {
            let watts = (pulses - last_pulses) * wh_per_pulse * 3_600_000.0 / elapsed_ms as f64;
            out = out.number("w", round(watts, 1));
        }
    }
    emit(&Message::new(out.finish().as_bytes()))?;
    Ok(())
}

headwater_plugin::plugin!(init = init, on_message = on_message);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use headwater_plugin::testing;

    #[test]
    fn power_is_the_energy_between_two_readings_over_their_time() {
        testing::reset();
        assert_eq!(testing::init(init, r#"{"wh_per_pulse": 0.5}"#).code, 0);
        let first = testing::run(
            on_message,
            &Message::new(br#"{"pulses": 1000, "ts": 0}"#).with_topic("m"),
        );
        assert_eq!(first.emits[0].payload_str(), r#"{"pulses":1000,"kwh":0.5}"#);
        // 100 pulses of 0.5 Wh in 60 s: 50 Wh in a minute is 3000 W.
        let second = testing::run(
            on_message,
            &Message::new(br#"{"pulses": 1100, "ts": 60000}"#).with_topic("m"),
        );
        assert_eq!(
            second.emits[0].payload_str(),
            r#"{"pulses":1100,"kwh":0.55,"w":3000}"#
        );
        let reset = testing::run(
            on_message,
            &Message::new(br#"{"pulses": 3, "ts": 61000}"#).with_topic("m"),
        );
        assert_eq!(reset.emits[0].payload_str(), r#"{"pulses":3,"kwh":0.0015}"#);
        assert_eq!(testing::run(on_message, &Message::new(b"{}")).code, 3);
        assert_ne!(testing::init(init, r#"{"wh_per_pulse": -1}"#).code, 0);
    }
}
