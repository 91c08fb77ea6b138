//! Unit converter: rewrites one number of the payload from one unit to another, in
//! place (the rest of the payload is kept byte for byte).
//!
//! config: `{ field: "temp", from: "F", to: "C", decimals: 2 }` (`field: ""` converts a
//! bare-number payload; `decimals` defaults to 2).
//! Units: temperature `C`, `F`, `K`; pressure `Pa`, `hPa`, `kPa`, `bar`, `psi`,
//! `inHg`, `mmHg`; speed `m/s`, `km/h`, `mph`, `kn`; energy `Wh`, `kWh`, `MWh`, `J`;
//! power `W`, `kW`. A message without a number at `field` fails with code 3 (the
//! `error` port); a bad config stops the node with the reason in the log.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::String;

use headwater_plugin::{Error, Global, Message, emit, json, round};

/// A unit as `base = value * scale + offset` in its dimension's base unit.
struct Unit {
    dimension: &'static str,
    scale: f64,
    offset: f64,
}

const fn unit(dimension: &'static str, scale: f64, offset: f64) -> Unit {
    Unit {
        dimension,
        scale,
        offset,
    }
}

fn lookup(name: &str) -> Option<Unit> {
    Some(match name {
        "C" | "°C" => unit("temperature", 1.0, 273.15),
        "F" | "°F" => unit("temperature", 5.0 / 9.0, 459.67 * 5.0 / 9.0),
        "K" => unit("temperature", 1.0, 0.0),
        "Pa" => unit("pressure", 1.0, 0.0),
        "hPa" => unit("pressure", 100.0, 0.0),
        "kPa" => unit("pressure", 1000.0, 0.0),
        "bar" => unit("pressure", 100_000.0, 0.0),
        "psi" => unit("pressure", 6_894.757_293, 0.0),
        "inHg" => unit("pressure", 3_386.389, 0.0),
        "mmHg" => unit("pressure", 133.322_387, 0.0),
        "m/s" => unit("speed", 1.0, 0.0),
        "km/h" => unit("speed", 1.0 / 3.6, 0.0),
        "mph" => unit("speed", 0.447_04, 0.0),
        "kn" => unit("speed", 1_852.0 / 3_600.0, 0.0),
        "Wh" => unit("energy", 3_600.0, 0.0),
        "kWh" => unit("energy", 3_600_000.0, 0.0),
        "MWh" => unit("energy", 3_600_000_000.0, 0.0),
        "J" => unit("energy", 1.0, 0.0),
        "W" => unit("power", 1.0, 0.0),
        "kW" => unit("power", 1000.0, 0.0),
        _ => return None,
    })
}

struct Config {
    field: String,
    from: Unit,
    to: Unit,
    decimals: u32,
}

static CONFIG: Global<Option<Config>> = Global::new(None);

fn unit_option(config: &[u8], key: &str) -> Result<Unit, Error> {
    let Some(name) = json::get_str(config, key) else {
        return Err(Error::fail(&format!(
            "config: {{ from: UNIT, to: UNIT }} is required ({key} is missing)"
        )));
    };
    lookup(&name).ok_or_else(|| Error::fail(&format!("unknown unit `{name}` in {key}")))
}

fn init(config: &[u8]) -> Result<(), Error> {
    let from = unit_option(config, "from")?;
    let to = unit_option(config, "to")?;
    if from.dimension != to.dimension {
        return Err(Error::fail(&format!(
            "cannot convert {} to {}",
            from.dimension, to.dimension
        )));
    }
    let field = json::get_str(config, "field").unwrap_or_else(|| String::from("value"));
    let decimals = match json::get(config, "decimals") {
        None => 2,
        Some(json::Value::Number(n)) if (0.0..=15.0).contains(&n) => n as u32,
        Some(_) => return Err(Error::fail("decimals must be a number from 0 to 15")),
    };
    CONFIG.set(Some(Config {
        field,
        from,
        to,
        decimals,
    }));
    Ok(())
}

fn on_message(msg: &Message) -> Result<(), Error> {
    CONFIG.with(|config| {
        let Some(config) = config else {
            return Err(Error::fail("the plugin was not initialised"));
        };
        let Some(field) = json::find(msg.payload, &config.field) else {
            return Err(Error::with_code(3));
        };
        let json::Value::Number(value) = field.value else {
            return Err(Error::with_code(3));
        };
        let base = value * config.from.scale + config.from.offset;
        let converted = round((base - config.to.offset) / config.to.scale, config.decimals);
        let mut text = String::new();
        json::write_f64(&mut text, converted);
        let payload = json::replace(msg.payload, field.span, text.as_bytes());
        emit(&Message::new(&payload))?;
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
    fn fahrenheit_becomes_celsius_in_place() {
        testing::reset();
        let config = r#"{"field": "t", "from": "F", "to": "C", "decimals": 1}"#;
        assert_eq!(testing::init(init, config).code, 0);
        let out = testing::run(on_message, &Message::new(br#"{"id":"a","t":212,"x":[1]}"#));
        assert_eq!(out.emits[0].payload_str(), r#"{"id":"a","t":100,"x":[1]}"#);
        let out = testing::run(on_message, &Message::new(br#"{"t":-40}"#));
        assert_eq!(out.emits[0].payload_str(), r#"{"t":-40}"#);
        assert_eq!(
            testing::run(on_message, &Message::new(br#"{"t":"hot"}"#)).code,
            3
        );
    }

    #[test]
    fn bare_numbers_and_bad_configs() {
        testing::reset();
        assert_eq!(
            testing::init(init, r#"{"field":"","from":"kWh","to":"J"}"#).code,
            0
        );
        let out = testing::run(on_message, &Message::new(b"1.5"));
        assert_eq!(out.emits[0].payload_str(), "5400000");
        assert_ne!(testing::init(init, r#"{"from":"C","to":"bar"}"#).code, 0);
        assert_ne!(testing::init(init, r#"{"from":"C","to":"X"}"#).code, 0);
        assert_ne!(testing::init(init, "null").code, 0);
    }
}
