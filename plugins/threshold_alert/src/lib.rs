//! Threshold alert: passes readings on `out` and, when a reading's number crosses a
//! limit, also emits an alert on port 1 (`alert`): one input, two outputs.
//!
//! config: `{ field: "value", above: 30, below: 5, pass_normal: true }` (give `above`,
//! `below` or both; `field: ""` reads a bare number).
//! - a reading above `above` or below `below`: the reading unchanged on `out`, and on
//!   `alert` `{"alert": "above"|"below", "value": v, "limit": l, "topic": t}` with the
//!   topic `t/alert`;
//! - a reading within the limits: unchanged on `out`, or dropped with
//!   `pass_normal: false`;
//! - a message without a number at `field`: dropped.
//!
//! The node needs `ports: [out, alert]`.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::String;

use headwater_plugin::{Error, Global, Message, emit, emit_to, json};

/// The port number of `alert` in `ports: [out, alert]`.
const ALERT_PORT: u32 = 1;

struct Config {
    field: String,
    above: Option<f64>,
    below: Option<f64>,
    pass_normal: bool,
}

static CONFIG: Global<Option<Config>> = Global::new(None);

fn limit(config: &[u8], key: &str) -> Result<Option<f64>, Error> {
    match json::get(config, key) {
        None | Some(json::Value::Null) => Ok(None),
        Some(json::Value::Number(number)) => Ok(Some(number)),
        Some(_) => Err(Error::fail(&format!("{key} must be a number"))),
    }
}

fn init(config: &[u8]) -> Result<(), Error> {
    let above = limit(config, "above")?;
    let below = limit(config, "below")?;
    if above.is_none() && below.is_none() {
        return Err(Error::fail(
            "give a limit: config: { above: NUMBER } and/or { below: NUMBER }",
        ));
    }
    let field = json::get_str(config, "field").unwrap_or_else(|| String::from("value"));
    let pass_normal = json::get_bool(config, "pass_normal").unwrap_or(true);
    CONFIG.set(Some(Config {
        field,
        above,
        below,
        pass_normal,
    }));
    Ok(())
}

fn on_message(msg: &Message) -> Result<(), Error> {
    CONFIG.with(|config| {
        let Some(config) = config else {
            return Err(Error::fail("the plugin was not initialised"));
        };
        let Some(value) = json::get_f64(msg.payload, &config.field) else {
            return Ok(()); // nothing to compare: dropped
        };
        let crossed = match (config.above, config.below) {
            (Some(above), _) if value > above => Some(("above", above)),
            (_, Some(below)) if value < below => Some(("below", below)),
            _ => None,
        };
        let Some((direction, limit)) = crossed else {
            if config.pass_normal {
                emit(&Message::new(msg.payload))?;
            }
            return Ok(());
        };
        emit(&Message::new(msg.payload))?;
        let alert = json::Object::new()
            .string("alert", direction)
            .number("value", value)
            .number("limit", limit)
            .string("topic", msg.topic)
            .finish();
        let topic = format!("{}/alert", msg.topic);
        emit_to(
            ALERT_PORT,
            &Message::new(alert.as_bytes()).with_topic(&topic),
        )?;
        Ok(())
    })
}

headwater_plugin::plugin!(init = init, on_message = on_message);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use headwater_plugin::testing;

    #[test]
    fn readings_pass_alerts_fork_and_the_rest_drops() {
        testing::reset();
        testing::set_ports(2);
        assert_eq!(testing::init(init, r#"{"above": 30, "below": 5}"#).code, 0);
        let normal = testing::run(on_message, &Message::new(br#"{"value": 20}"#));
        assert_eq!(normal.emits.len(), 1);
        let hot = testing::run(
            on_message,
            &Message::new(br#"{"value": 31.5}"#).with_topic("room"),
        );
        assert_eq!(hot.emits.len(), 2);
        assert_eq!(
            (hot.emits[1].port, hot.emits[1].topic.as_str()),
            (1, "room/alert")
        );
        assert_eq!(
            hot.emits[1].payload_str(),
            r#"{"alert":"above","value":31.5,"limit":30,"topic":"room"}"#
        );
        let cold = testing::run(on_message, &Message::new(b"4"));
        assert!(cold.emits.is_empty(), "no field `value`: dropped");
        assert_ne!(testing::init(init, "null").code, 0);
    }
}
