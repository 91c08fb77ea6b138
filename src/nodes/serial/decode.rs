//! Turning one frame into a payload: text as it is, bytes as they are, a regex's named
//! captures, CSV cells, a JSON value (validated), or an NMEA 0183 sentence with its
//! checksum verified. A frame that does not decode is a [`DecodeError`], never a panic.

use bytes::Bytes;
use regex::Regex;
use serde_json::{Map, Value};

/// How a frame becomes a payload.
#[derive(Clone, Debug)]
pub enum Decoder {
    /// UTF-8 text, sent as it is.
    Text,
    /// Any bytes, sent as they are (fixed-length records).
    Bytes,
    /// A JSON object of the named captures.
    Regex(Regex),
    /// A JSON object of the cells, named by the columns.
    Csv(Vec<String>),
    /// A JSON value, sent as it is once validated.
    Json,
    /// An NMEA 0183 sentence: `{"talker", "type", "fields", "raw"}`.
    Nmea,
}

/// Why a frame was refused; [`DecodeError::kind`] names the counter and the
/// `serial_error` header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Text was expected.
    #[error("the frame is not UTF-8 text")]
    NotText,
    /// The regex did not match.
    #[error("the frame does not match the regex")]
    NoMatch,
    /// A CSV line that does not parse or has the wrong number of cells.
    #[error("bad CSV: {0}")]
    Csv(String),
    /// Invalid JSON.
    #[error("bad JSON: {0}")]
    Json(String),
    /// Not an NMEA sentence (no `$`/`!`, no `*hh` checksum).
    #[error("bad NMEA sentence: {0}")]
    Nmea(String),
    /// The NMEA checksum does not match the sentence.
    #[error(
        "NMEA checksum mismatch: the sentence says {stated:02X}, its bytes give {computed:02X}"
    )]
    Checksum {
        /// The checksum written after `*`.
        stated: u8,
        /// The XOR of the bytes between `$` and `*`.
        computed: u8,
    },
}

impl DecodeError {
    /// A short stable name: `not_text`, `no_match`, `bad_csv`, `bad_json`, `bad_nmea`,
    /// `bad_checksum`.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::NotText => "not_text",
            DecodeError::NoMatch => "no_match",
            DecodeError::Csv(_) => "bad_csv",
            DecodeError::Json(_) => "bad_json",
            DecodeError::Nmea(_) => "bad_nmea",
            DecodeError::Checksum { .. } => "bad_checksum",
        }
    }
}

impl Decoder {
    /// The payload of `frame`.
    pub fn decode(&self, frame: &Bytes) -> Result<Bytes, DecodeError> {
        match self {
            Decoder::Bytes => Ok(frame.clone()),
            Decoder::Text => text(frame).map(|_| frame.clone()),
            Decoder::Json => {
                serde_json::from_slice::<serde::de::IgnoredAny>(frame)
                    .map_err(|e| DecodeError::Json(e.to_string()))?;
                Ok(frame.clone())
            }
            Decoder::Regex(regex) => {
                let captures = regex.captures(text(frame)?).ok_or(DecodeError::NoMatch)?;
                let mut object = Map::new();
                for name in regex.capture_names().flatten() {
                    let value = captures
                        .name(name)
                        .map_or(Value::Null, |m| scalar(m.as_str()));
                    object.insert(name.to_string(), value);
                }
                Ok(json_bytes(Value::Object(object)))
            }
            Decoder::Csv(columns) => {
                let cells = csv_cells(text(frame)?)?;
                if cells.len() != columns.len() {
                    return Err(DecodeError::Csv(format!(
                        "{} cells, the columns name {}",
                        cells.len(),
                        columns.len()
                    )));
                }
                let object: Map<String, Value> = columns
                    .iter()
                    .zip(cells)
                    .map(|(name, cell)| (name.clone(), cell))
                    .collect();
                Ok(json_bytes(Value::Object(object)))
            }
            Decoder::Nmea => nmea(text(frame)?).map(json_bytes),
        }
    }
}

fn text(frame: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(frame).map_err(|_| DecodeError::NotText)
}

fn json_bytes(value: Value) -> Bytes {
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

/// A captured or CSV text as JSON: a number when the whole text is a JSON number
/// (`21.5`, `-3`, `1e3`), else a string. So `007`, `+5`, `0x1F`, `NaN` and ` 5` stay
/// strings: leading zeros in ids and codes survive, and nothing is guessed.
pub fn scalar(text: &str) -> Value {
    let looks_numeric = text
        .bytes()
        .next()
        .is_some_and(|b| b == b'-' || b.is_ascii_digit())
        && text.bytes().last().is_some_and(|b| b.is_ascii_digit());
    if looks_numeric && let Ok(number) = serde_json::from_str::<serde_json::Number>(text) {
        return Value::Number(number);
    }
    Value::String(text.to_string())
}

/// One CSV line (RFC 4180 quoting: `"a,b"`, `""` for a quote); unquoted cells are
/// trimmed of spaces and tabs.
fn csv_cells(line: &str) -> Result<Vec<Value>, DecodeError> {
    let mut cells = Vec::new();
    let mut rest = line;
    loop {
        let trimmed = rest.trim_start_matches([' ', '\t']);
        if let Some(quoted) = trimmed.strip_prefix('"') {
            let mut cell = String::new();
            let mut chars = quoted.char_indices();
            let after = loop {
                match chars.next() {
                    Some((i, '"')) => {
                        if quoted[i + 1..].starts_with('"') {
                            cell.push('"');
                            chars.next();
                        } else {
                            break &quoted[i + 1..];
                        }
                    }
                    Some((_, c)) => cell.push(c),
                    None => return Err(DecodeError::Csv("a quote is not closed".into())),
                }
            };
            // A quoted cell is always text: its quotes say so.
            cells.push(Value::String(cell));
            let after = after.trim_start_matches([' ', '\t']);
            match after.strip_prefix(',') {
                Some(next) => rest = next,
                None if after.is_empty() => return Ok(cells),
                None => {
                    return Err(DecodeError::Csv(
                        "text after a closing quote; quote the whole cell".into(),
                    ));
                }
            }
        } else {
            let (cell, next) = match trimmed.find(',') {
                Some(i) => (&trimmed[..i], Some(&trimmed[i + 1..])),
                None => (trimmed, None),
            };
            let cell = cell.trim_end_matches([' ', '\t']);
            if cell.contains('"') {
                return Err(DecodeError::Csv(
                    "a quote inside an unquoted cell; quote the whole cell".into(),
                ));
            }
            cells.push(scalar(cell));
            match next {
                Some(next) => rest = next,
                None => return Ok(cells),
            }
        }
    }
}

/// An NMEA 0183 sentence: `$TTSSS,f1,f2*HH` (or `!` for encapsulated ones such as AIS).
/// Fields stay strings: `002153.000` and `0049.5` mean what their digits say.
fn nmea(line: &str) -> Result<Value, DecodeError> {
    let line = line.trim_end();
    let body = line
        .strip_prefix('$')
        .or_else(|| line.strip_prefix('!'))
        .ok_or_else(|| DecodeError::Nmea("a sentence starts with `$` or `!`".into()))?;
    let (data, stated) = body
        .rsplit_once('*')
        .ok_or_else(|| DecodeError::Nmea("no `*hh` checksum at the end".into()))?;
    let stated = (stated.len() == 2)
        .then(|| u8::from_str_radix(stated, 16).ok())
        .flatten()
        .ok_or_else(|| DecodeError::Nmea(format!("checksum `{stated}` is not two hex digits")))?;
    let computed = data.bytes().fold(0u8, |sum, b| sum ^ b);
    if computed != stated {
        return Err(DecodeError::Checksum { stated, computed });
    }
    let mut parts = data.split(',');
    let address = parts.next().unwrap_or_default();
    if address.len() < 2 || !address.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(DecodeError::Nmea(format!(
            "`{address}` is not a talker and sentence type"
        )));
    }
    // Proprietary sentences (`$PGRME`) have the talker `P` and a maker's type.
    let split = if address.starts_with('P') { 1 } else { 2 };
    let (talker, kind) = address.split_at(split);
    let fields: Vec<Value> = parts.map(|f| Value::String(f.to_string())).collect();
    let mut object = Map::new();
    object.insert("talker".into(), Value::from(talker));
    object.insert("type".into(), Value::from(kind));
    object.insert("fields".into(), Value::Array(fields));
    object.insert("raw".into(), Value::from(line));
    Ok(Value::Object(object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(decoder: &Decoder, frame: &str) -> Result<Value, DecodeError> {
        let bytes = decoder.decode(&Bytes::copy_from_slice(frame.as_bytes()))?;
        Ok(serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())))
    }

    #[test]
    fn numbers_are_json_numbers_only() {
        for (text, expected) in [
            ("21.5", json!(21.5)),
            ("-3", json!(-3)),
            ("0", json!(0)),
            ("1e3", json!(1000.0)),
            ("007", json!("007")),
            ("+5", json!("+5")),
            ("0x1F", json!("0x1F")),
            ("NaN", json!("NaN")),
            (" 5", json!(" 5")),
            ("5.", json!("5.")),
            ("1e999", json!("1e999")),
            ("", json!("")),
            ("-", json!("-")),
        ] {
            assert_eq!(scalar(text), expected, "{text:?}");
        }
    }

    #[test]
    fn regex_captures_become_fields() {
        let d = Decoder::Regex(
            Regex::new(r"^T=(?P<temp>\S+) H=(?P<hum>\d+)(?: id=(?P<id>\w+))?$").unwrap(),
        );
        assert_eq!(
            decode(&d, "T=21.5 H=40 id=007").unwrap(),
            json!({"temp": 21.5, "hum": 40, "id": "007"})
        );
        assert_eq!(
            decode(&d, "T=-2 H=99").unwrap(),
            json!({"temp": -2, "hum": 99, "id": null})
        );
        assert_eq!(decode(&d, "garbage").unwrap_err(), DecodeError::NoMatch);
        let bad = Decoder::Regex(Regex::new("x").unwrap());
        assert_eq!(
            bad.decode(&Bytes::from_static(b"\xff\xfe")).unwrap_err(),
            DecodeError::NotText
        );
    }

    #[test]
    fn csv_lines() {
        let d = Decoder::Csv(vec!["id".into(), "lux".into(), "note".into()]);
        assert_eq!(
            decode(&d, "lux-1, 532.5 ,ok").unwrap(),
            json!({"id": "lux-1", "lux": 532.5, "note": "ok"})
        );
        assert_eq!(
            decode(&d, r#""a,b",12,"say ""hi""""#).unwrap(),
            json!({"id": "a,b", "lux": 12, "note": "say \"hi\""})
        );
        assert_eq!(
            decode(&d, r#""42",,"#).unwrap(),
            json!({"id": "42", "lux": "", "note": ""})
        );
        assert_eq!(
            decode(&d, "1,2").unwrap_err(),
            DecodeError::Csv("2 cells, the columns name 3".into())
        );
        assert!(matches!(
            decode(&d, r#""open,1,2"#).unwrap_err(),
            DecodeError::Csv(m) if m.contains("not closed")
        ));
        assert!(matches!(
            decode(&d, r#""a"b,1,2"#).unwrap_err(),
            DecodeError::Csv(m) if m.contains("after a closing quote")
        ));
        assert!(matches!(
            decode(&d, r#"a"b,1,2"#).unwrap_err(),
            DecodeError::Csv(m) if m.contains("unquoted")
        ));
    }

    #[test]
    fn json_lines_are_validated_and_kept() {
        let d = Decoder::Json;
        let frame = Bytes::from_static(br#"{"b":1,"a":[true]}"#);
        assert_eq!(d.decode(&frame).unwrap(), frame);
        assert_eq!(
            d.decode(&Bytes::from_static(b"{\"a\":"))
                .unwrap_err()
                .kind(),
            "bad_json"
        );
    }

    #[test]
    fn nmea_sentences_and_checksums() {
        let d = Decoder::Nmea;
        let gga = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";
        assert_eq!(
            decode(&d, gga).unwrap(),
            json!({
                "talker": "GP", "type": "GGA",
                "fields": ["123519", "4807.038", "N", "01131.000", "E", "1", "08", "0.9",
                           "545.4", "M", "46.9", "M", "", ""],
                "raw": gga
            })
        );
        let rmc = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A";
        assert_eq!(decode(&d, rmc).unwrap()["type"], "RMC");
        // Lowercase hex is accepted.
        assert_eq!(
            decode(&d, &rmc.replace("*6A", "*6a")).unwrap()["talker"],
            "GP"
        );
        let ais = "!AIVDM,1,1,,B,15M67FC000G?ufbE`FepT@3n00Sa,0*5C";
        let checked = nmea_checksum(&ais[1..ais.len() - 3]);
        let ais = format!("{}{checked:02X}", &ais[..ais.len() - 2]);
        assert_eq!(decode(&d, &ais).unwrap()["talker"], "AI");
        let proprietary = format!("$PGRME,15.0,M*{:02X}", nmea_checksum("PGRME,15.0,M"));
        let value = decode(&d, &proprietary).unwrap();
        assert_eq!(
            (value["talker"].clone(), value["type"].clone()),
            (json!("P"), json!("GRME"))
        );

        assert_eq!(
            decode(&d, &gga.replace("*47", "*48")).unwrap_err(),
            DecodeError::Checksum {
                stated: 0x48,
                computed: 0x47
            }
        );
        // One flipped character in the data.
        assert_eq!(
            decode(&d, &gga.replace("4807", "4817")).unwrap_err().kind(),
            "bad_checksum"
        );
        for (bad, why) in [
            ("GPGGA,1*00", "starts with"),
            ("$GPGGA,1", "no `*hh`"),
            ("$GPGGA,1*4", "two hex digits"),
            ("$GPGGA,1*ZZ", "two hex digits"),
            ("$*00", "talker"),
        ] {
            match decode(&d, bad).unwrap_err() {
                DecodeError::Nmea(m) => assert!(m.contains(why), "{bad}: {m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    fn nmea_checksum(data: &str) -> u8 {
        data.bytes().fold(0, |s, b| s ^ b)
    }

    #[test]
    fn text_must_be_utf8() {
        assert_eq!(
            Decoder::Text
                .decode(&Bytes::from_static(b"ok \xc3("))
                .unwrap_err(),
            DecodeError::NotText
        );
        assert_eq!(
            Decoder::Bytes
                .decode(&Bytes::from_static(b"\xc3("))
                .unwrap(),
            Bytes::from_static(b"\xc3(")
        );
    }
}
