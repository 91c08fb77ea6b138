//! {{name}}: a Headwater plugin. Multiplies the number `value` of each JSON payload by
//! the config's `factor` (1 by default) and drops messages without one.
//!
//! Build: `headwater plugin build .` (or `cargo build --release --target
//! wasm32-unknown-unknown`); test: `cargo test`.
#![no_std]

use headwater_plugin::{Error, Global, Message, emit, json};

static FACTOR: Global<f64> = Global::new(1.0);

/// Called once with the node's `config:` as JSON (`null` when absent).
fn init(config: &[u8]) -> Result<(), Error> {
    match json::get(config, "factor") {
        None => {}
        Some(json::Value::Number(factor)) => FACTOR.set(factor),
        Some(_) => return Err(Error::fail("factor must be a number")),
    }
    Ok(())
}

/// Called once per message: what it emits is the output; no emit drops the message.
fn on_message(msg: &Message) -> Result<(), Error> {
    let Some(value) = json::get_f64(msg.payload, "value") else {
        return Ok(());
    };
    let out = json::Object::new()
        .number("value", value * FACTOR.get())
        .finish();
    emit(&Message::new(out.as_bytes()))?;
    Ok(())
}

headwater_plugin::plugin!(init = init, on_message = on_message);

#[cfg(test)]
mod tests {
    use super::*;
    use headwater_plugin::testing;

    #[test]
    fn values_are_multiplied_and_the_rest_dropped() {
        testing::reset();
        assert_eq!(testing::init(init, r#"{"factor": 2}"#).code, 0);
        let out = testing::run(on_message, &Message::new(br#"{"value": 21}"#));
        assert_eq!(out.emits[0].payload, br#"{"value":42}"#);
        assert!(testing::run(on_message, &Message::new(b"{}")).emits.is_empty());
    }
}
