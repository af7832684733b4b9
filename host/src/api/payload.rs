//! JSON and MessagePack bodies, and the conversion between them.
//!
//! Plugins speak MessagePack with named fields; people and most clients speak JSON. A request
//! body is JSON unless its `Content-Type` is `application/msgpack`; a response is JSON unless
//! `Accept` asks for `application/msgpack`.
//!
//! A response carrying plugins' payloads (replies, states, events) is a [`Document`]: its
//! payloads are written straight into the body, transcoded to JSON text or copied as the
//! MessagePack they are, never decoded into value trees (see [`crate::msgpack`]). So answering
//! with a payload costs the host a small constant times the payload's size.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value as Json;

use super::error::ApiError;
use crate::msgpack;

const MSGPACK: &str = "application/msgpack";

fn is_msgpack(value: Option<&header::HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("msgpack"))
}

/// The command carried by a request body, as MessagePack: exactly one well-formed value,
/// nested at most [`msgpack::DEPTH_MAX`] deep.
pub fn command_from_body(headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            "a command body is required (JSON, or MessagePack with Content-Type: application/msgpack)",
        ));
    }
    if is_msgpack(headers.get(header::CONTENT_TYPE)) {
        msgpack::check_one_value(body).map_err(|e| {
            ApiError::bad_request(
                "invalid_msgpack",
                format!("the body is not one MessagePack value: {e}"),
            )
        })?;
        return Ok(body.to_vec());
    }
    let json: Json = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
    })?;
    json_to_msgpack(&json)
}

pub fn json_to_msgpack(json: &Json) -> Result<Vec<u8>, ApiError> {
    rmp_serde::to_vec_named(json).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding_failed",
            e.to_string(),
        )
    })
}

/// A plugin's MessagePack as a JSON value, for small payloads inside other documents (a
/// lease-lost notice). Bytes that are not one MessagePack value are shown as an array of numbers
/// rather than lost.
pub fn msgpack_to_json(bytes: &[u8]) -> Json {
    let mut text = Vec::new();
    write_payload_json(bytes, &mut text);
    serde_json::from_slice(&text).unwrap_or(Json::Null)
}

/// One field of a [`Document`].
enum Field {
    Json(Json),
    /// MessagePack written by a plugin.
    Payload(Vec<u8>),
    Documents(Vec<Document>),
    /// Bytes only MessagePack can carry: a binary for MessagePack clients, left out of JSON.
    Binary(Vec<u8>),
}

/// A response document: named fields, some of them plugins' payloads.
#[derive(Default)]
pub struct Document {
    fields: Vec<(&'static str, Field)>,
}

impl Document {
    pub fn new() -> Self {
        Document::default()
    }

    /// A field with a value the host made.
    pub fn field(mut self, name: &'static str, value: impl Into<Json>) -> Self {
        self.fields.push((name, Field::Json(value.into())));
        self
    }

    /// A field holding a plugin's MessagePack.
    pub fn payload(mut self, name: &'static str, bytes: Vec<u8>) -> Self {
        self.fields.push((name, Field::Payload(bytes)));
        self
    }

    /// A field only MessagePack clients get: `bytes` as a binary.
    pub fn binary(mut self, name: &'static str, bytes: Vec<u8>) -> Self {
        self.fields.push((name, Field::Binary(bytes)));
        self
    }

    /// A field holding a list of documents.
    pub fn documents(mut self, name: &'static str, documents: Vec<Document>) -> Self {
        self.fields.push((name, Field::Documents(documents)));
        self
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        let in_json = self
            .fields
            .iter()
            .filter(|(_, field)| !matches!(field, Field::Binary(_)));
        for (i, (name, field)) in in_json.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_value(&Json::from(*name), out);
            out.push(b':');
            match field {
                Field::Json(value) => write_json_value(value, out),
                Field::Payload(bytes) => write_payload_json(bytes, out),
                Field::Binary(_) => {}
                Field::Documents(documents) => {
                    out.push(b'[');
                    for (j, document) in documents.iter().enumerate() {
                        if j > 0 {
                            out.push(b',');
                        }
                        document.write_json(out);
                    }
                    out.push(b']');
                }
            }
        }
        out.push(b'}');
    }

    fn write_msgpack(&self, out: &mut Vec<u8>) -> Result<(), ApiError> {
        rmp::encode::write_map_len(out, self.fields.len() as u32).map_err(encoding_failed)?;
        for (name, field) in &self.fields {
            rmp::encode::write_str(out, name).map_err(encoding_failed)?;
            match field {
                Field::Json(value) => {
                    rmp_serde::encode::write_named(out, value).map_err(encoding_failed)?
                }
                // A payload that is one well-formed value goes out as it is; anything else (only
                // events stored before guests' output was checked) as a binary.
                Field::Payload(bytes) if msgpack::check_one_value(bytes).is_ok() => {
                    out.extend_from_slice(bytes)
                }
                Field::Payload(bytes) | Field::Binary(bytes) => {
                    rmp::encode::write_bin(out, bytes).map_err(encoding_failed)?
                }
                Field::Documents(documents) => {
                    rmp::encode::write_array_len(out, documents.len() as u32)
                        .map_err(encoding_failed)?;
                    for document in documents {
                        document.write_msgpack(out)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn write_json_value(value: &Json, out: &mut Vec<u8>) {
    // Writing a JSON value into a Vec cannot fail.
    let _ = serde_json::to_writer(out, value);
}

/// A plugin's payload as JSON text; bytes that are not one MessagePack value as an array of
/// numbers.
fn write_payload_json(bytes: &[u8], out: &mut Vec<u8>) {
    if msgpack::write_json(bytes, out).is_err() {
        write_json_value(&Json::from(bytes.to_vec()), out);
    }
}

fn encoding_failed(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "encoding_failed",
        error.to_string(),
    )
}

/// A response in the format the client accepts.
pub fn respond(headers: &HeaderMap, status: StatusCode, document: &Document) -> Response {
    let mut body = Vec::new();
    if is_msgpack(headers.get(header::ACCEPT)) {
        match document.write_msgpack(&mut body) {
            Ok(()) => (status, [(header::CONTENT_TYPE, MSGPACK)], body).into_response(),
            Err(error) => error.into_response(),
        }
    } else {
        document.write_json(&mut body);
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json_of(document: &Document) -> Json {
        let mut out = Vec::new();
        document.write_json(&mut out);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn documents_carry_payloads_in_both_formats() {
        let reply = json_to_msgpack(&json!({"value": 5, "tags": ["a"]})).unwrap();
        let event = |n: u64| {
            Document::new()
                .field("seq_nr", n)
                .payload("payload", reply.clone())
        };
        let document = Document::new()
            .field("plugin", "counter@abc")
            .payload("reply", reply.clone())
            .payload("garbage", vec![0xc1, 0x01])
            .documents("events", vec![event(1), event(2)]);
        let expected = json!({
            "plugin": "counter@abc",
            "reply": {"value": 5, "tags": ["a"]},
            "garbage": [0xc1, 0x01],
            "events": [{"seq_nr": 1, "payload": {"value": 5, "tags": ["a"]}},
                       {"seq_nr": 2, "payload": {"value": 5, "tags": ["a"]}}],
        });
        assert_eq!(json_of(&document), expected);
        let mut packed = Vec::new();
        document.write_msgpack(&mut packed).unwrap();
        let decoded = rmpv::decode::read_value(&mut &packed[..]).unwrap();
        let field = |name: &str| {
            decoded
                .as_map()
                .unwrap()
                .iter()
                .find(|(key, _)| key.as_str() == Some(name))
                .unwrap()
                .1
                .clone()
        };
        let as_json = |value: rmpv::Value| {
            let mut bytes = Vec::new();
            rmpv::encode::write_value(&mut bytes, &value).unwrap();
            msgpack_to_json(&bytes)
        };
        assert_eq!(as_json(field("reply")), expected["reply"]);
        assert_eq!(as_json(field("events")), expected["events"]);
        // A payload that is not MessagePack goes out as a binary.
        assert_eq!(field("garbage"), rmpv::Value::Binary(vec![0xc1, 0x01]));
    }

    #[test]
    fn bodies_are_checked() {
        let json_headers = HeaderMap::new();
        assert_eq!(
            command_from_body(&json_headers, b"").unwrap_err().code,
            "empty_body"
        );
        assert_eq!(
            command_from_body(&json_headers, b"{nope").unwrap_err().code,
            "invalid_json"
        );
        let mut msgpack_headers = HeaderMap::new();
        msgpack_headers.insert(header::CONTENT_TYPE, MSGPACK.parse().unwrap());
        let code = |body: &[u8]| command_from_body(&msgpack_headers, body).unwrap_err().code;
        assert_eq!(code(&[0x92, 0x01]), "invalid_msgpack");
        assert_eq!(code(&[0xc0, 0xc0]), "invalid_msgpack");
        // 400 levels of nested arrays: refused, not a stack overflow.
        let mut nested = vec![0x91; 400];
        nested.push(0xc0);
        assert_eq!(code(&nested), "invalid_msgpack");
        assert_eq!(
            command_from_body(&msgpack_headers, &[0x80]).unwrap(),
            vec![0x80]
        );
    }
}
