//! MessagePack with named fields: the encoding of every payload that crosses the WIT boundary.
//!
//! Structs are encoded as maps keyed by field name (`rmp_serde::to_vec_named`), so the host can
//! translate them to JSON and guests in other languages read them as plain dictionaries.

use serde::{Serialize, de::DeserializeOwned};

/// Encodes a value as MessagePack with named fields.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(value).map_err(|e| format!("cannot encode: {e}"))
}

/// Decodes MessagePack bytes; `what` names the payload in the error ("command", "state", …).
pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(bytes).map_err(|e| format!("cannot decode {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Point {
        x: i32,
        y: i32,
    }

    #[test]
    fn structs_are_maps_with_field_names() {
        let bytes = encode(&Point { x: 1, y: -2 }).unwrap();
        // fixmap of two entries, then the key "x".
        assert_eq!(bytes[0], 0x82);
        assert_eq!(&bytes[1..3], &[0xa1, b'x']);
        assert_eq!(
            decode::<Point>("point", &bytes).unwrap(),
            Point { x: 1, y: -2 }
        );
    }

    /// `testdata/msgpack-vectors.json` is the contract the Python and JavaScript SDKs are tested
    /// against: each vector must be exactly what rmp_serde writes for the value.
    #[test]
    fn the_shared_vectors_are_what_rmp_serde_writes() {
        let text = include_str!("../testdata/msgpack-vectors.json");
        let document: serde_json::Value = serde_json::from_str(text).unwrap();
        let vectors = document["vectors"].as_array().unwrap();
        assert!(vectors.len() > 40);
        for vector in vectors {
            let value = revive(&vector["value"]);
            let expected = vector["msgpack"].as_str().unwrap();
            let actual: String = encode(&value)
                .unwrap()
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect();
            assert_eq!(actual, expected, "vector {value}");
        }
    }

    /// Undoes the `{"$int": "digits"}` wrapping of integers beyond ±(2^53-1).
    fn revive(value: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::Object(map) if map.len() == 1 && map.contains_key("$int") => {
                let digits = map["$int"].as_str().unwrap();
                serde_json::from_str(digits).unwrap()
            }
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(key, item)| (key.clone(), revive(item)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(revive).collect()),
            other => other.clone(),
        }
    }

    #[test]
    fn decode_error_names_the_payload() {
        let error = decode::<Point>("command", &[0xc1]).unwrap_err();
        assert!(error.starts_with("cannot decode command:"), "{error}");
    }
}
