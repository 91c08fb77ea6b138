//! The JSON Schema of the flow file format, generated from the same config structs
//! that parse it, so editors autocomplete exactly what `check` accepts.

use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::{BufferSettings, Delivery, InputSpec, QueueSettings};
use crate::nodes::registry::{KINDS, Role};

/// The schema `headwater schema` prints.
pub fn flow_file_schema() -> Value {
    let mut generator = SchemaGenerator::default();
    let queue = QueueSettings::json_schema(&mut generator).to_value();
    let input_spec = InputSpec::json_schema(&mut generator).to_value();
    let delivery = Delivery::json_schema(&mut generator).to_value();
    let buffer = BufferSettings::json_schema(&mut generator).to_value();

    let mut node_variants = Vec::new();
    for kind in KINDS {
        let options = kind.schema(&mut generator).to_value();
        let options = inline_ref(&options, &mut generator);
        let mut properties = options
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut required: Vec<Value> = options
            .get("required")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        required.push(json!("type"));
        properties.insert(
            "type".into(),
            json!({ "const": kind.type_name(), "description": kind.doc() }),
        );
        properties.insert(
            "description".into(),
            json!({ "type": "string", "description": "Free text for people reading the flow" }),
        );
        properties.insert("state_key".into(), json!({ "type": "string", "description": "Key of this node's persistent state (default `flow/node`), so a renamed node keeps it" }));
        if kind.role() != Role::Source {
            properties.insert("inputs".into(), json!({ "$ref": "#/$defs/Inputs" }));
            properties.insert("queue".into(), json!({ "$ref": "#/$defs/QueueSettings" }));
            required.push(json!("inputs"));
        }
        if kind.role() == Role::Sink {
            properties.insert("buffer".into(), json!({ "$ref": "#/$defs/BufferSettings" }));
        }
        let mut variant = Map::new();
        variant.insert("type".into(), json!("object"));
        variant.insert("title".into(), json!(kind.type_name()));
        variant.insert("description".into(), json!(kind.doc()));
        variant.insert("properties".into(), Value::Object(properties));
        variant.insert("required".into(), Value::Array(required));
        variant.insert("additionalProperties".into(), json!(false));
        // Keep `if type == X then ...` shape: editors then report errors of the chosen
        // kind only, instead of every alternative of a `oneOf`.
        node_variants.push(json!({
            "if": { "properties": { "type": { "const": kind.type_name() } }, "required": ["type"] },
            "then": Value::Object(variant),
        }));
    }
    let type_names: Vec<&str> = KINDS.iter().map(|k| k.type_name()).collect();

    let broker = crate::broker::BrokerConfig::json_schema(&mut generator).to_value();
    let mut defs = Map::new();
    defs.insert("BrokerConfig".into(), broker);
    let api = crate::api::ApiConfig::json_schema(&mut generator).to_value();
    defs.insert("ApiConfig".into(), api);
    let reload = crate::engine::reload::ReloadConfig::json_schema(&mut generator).to_value();
    defs.insert("ReloadConfig".into(), reload);
    for (name, schema) in generator.take_definitions(true) {
        defs.insert(name, schema);
    }
    defs.insert("QueueSettings".into(), queue);
    defs.insert("InputSpec".into(), input_spec);
    defs.insert("Delivery".into(), delivery);
    defs.insert("BufferSettings".into(), buffer);
    defs.insert(
        "Inputs".into(),
        json!({
            "description": "Where the node reads from: `node`, `node.port`, or a list; an item may be `{ from, capacity, overflow }`",
            "anyOf": [
                { "type": "string" },
                { "type": "array", "items": { "anyOf": [ { "type": "string" }, { "$ref": "#/$defs/InputSpec" } ] } }
            ]
        }),
    );
    defs.insert(
        "Node".into(),
        json!({
            "type": "object",
            "required": ["type"],
            "properties": { "type": { "enum": type_names } },
            "allOf": node_variants,
        }),
    );

    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Headwater flow file",
        "type": "object",
        "required": ["version"],
        "additionalProperties": false,
        "properties": {
            "version": { "const": super::FORMAT_VERSION, "description": "Format version" },
            "data_dir": { "type": "string", "description": "Where state and files are kept (at most one file may set it)" },
            "mosquitto_conf": { "type": "string", "description": "A mosquitto.conf that configures the built-in broker instead of `broker:` (relative to this file)" },
            "broker": { "$ref": "#/$defs/BrokerConfig" },
            "api": { "$ref": "#/$defs/ApiConfig" },
            "reload": { "$ref": "#/$defs/ReloadConfig" },
            "flows": {
                "type": "object",
                "description": "Flows by name",
                "additionalProperties": {
                    "type": "object",
                    "required": ["nodes"],
                    "additionalProperties": false,
                    "properties": {
                        "description": { "type": "string" },
                        "delivery": { "$ref": "#/$defs/Delivery" },
                        "nodes": {
                            "type": "object",
                            "description": "Nodes by name (letters, digits, `_`, `-`)",
                            "additionalProperties": { "$ref": "#/$defs/Node" }
                        }
                    }
                }
            }
        },
        "$defs": defs,
    })
}

/// A kind's schema is usually a `$ref` into the generator's definitions; the node
/// variant needs its properties inline.
fn inline_ref(schema: &Value, generator: &mut SchemaGenerator) -> Value {
    let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
        return schema.clone();
    };
    let name = reference.rsplit('/').next().unwrap_or_default().to_string();
    generator
        .definitions_mut()
        .remove(&name)
        .unwrap_or_else(|| schema.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_variant() {
        let schema = flow_file_schema();
        let variants = schema["$defs"]["Node"]["allOf"].as_array().unwrap();
        assert_eq!(variants.len(), KINDS.len());
        for variant in variants {
            let then = &variant["then"];
            assert_eq!(then["additionalProperties"], json!(false));
            assert!(then["properties"]["type"]["const"].is_string());
        }
    }
}
