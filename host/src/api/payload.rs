//! JSON and MessagePack bodies, and the conversion between them.
//!
//! Plugins speak MessagePack with named fields; people and most clients speak JSON. A request
//! body is JSON unless its `Content-Type` is `application/msgpack`; a response is JSON unless
//! `Accept` asks for `application/msgpack`.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rmpv::Value as Msgpack;
use serde_json::{Map, Number, Value as Json};

use super::error::ApiError;

const MSGPACK: &str = "application/msgpack";

fn is_msgpack(value: Option<&header::HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("msgpack"))
}

/// The command carried by a request body, as MessagePack.
pub fn command_from_body(headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            "a command body is required (JSON, or MessagePack with Content-Type: application/msgpack)",
        ));
    }
    if is_msgpack(headers.get(header::CONTENT_TYPE)) {
        let mut reader = body;
        rmpv::decode::read_value(&mut reader).map_err(|e| {
            ApiError::bad_request(
                "invalid_msgpack",
                format!("the body is not MessagePack: {e}"),
            )
        })?;
        if !reader.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_msgpack",
                format!("{} bytes follow the MessagePack value", reader.len()),
            ));
        }
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

/// Decodes MessagePack produced by a plugin into JSON; bytes that are not MessagePack are shown
/// as an array of numbers rather than lost.
pub fn msgpack_to_json(bytes: &[u8]) -> Json {
    let mut reader = bytes;
    match rmpv::decode::read_value(&mut reader) {
        Ok(value) => to_json(&value),
        Err(_) => Json::Array(bytes.iter().map(|b| Json::from(*b)).collect()),
    }
}

fn to_json(value: &Msgpack) -> Json {
    match value {
        Msgpack::Nil => Json::Null,
        Msgpack::Boolean(b) => Json::Bool(*b),
        Msgpack::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Json::from(u),
            (None, Some(s)) => Json::from(s),
            (None, None) => Json::Null,
        },
        Msgpack::F32(f) => Number::from_f64(f64::from(*f)).map_or(Json::Null, Json::Number),
        Msgpack::F64(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Msgpack::String(s) => Json::String(match s.as_str() {
            Some(text) => text.to_owned(),
            None => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        }),
        Msgpack::Binary(bytes) => Json::Array(bytes.iter().map(|b| Json::from(*b)).collect()),
        Msgpack::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Msgpack::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(key, value)| {
                    let key = match key {
                        Msgpack::String(s) => s
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| key.to_string()),
                        other => other.to_string(),
                    };
                    (key, to_json(value))
                })
                .collect::<Map<_, _>>(),
        ),
        Msgpack::Ext(kind, data) => serde_json::json!({"ext_type": kind, "data": data}),
    }
}

/// A response in the format the client accepts. `json` is the document; MessagePack clients
/// get the same document encoded with named fields.
pub fn respond(headers: &HeaderMap, status: StatusCode, json: Json) -> Response {
    if is_msgpack(headers.get(header::ACCEPT)) {
        match json_to_msgpack(&json) {
            Ok(bytes) => (status, [(header::CONTENT_TYPE, MSGPACK)], bytes).into_response(),
            Err(error) => error.into_response(),
        }
    } else {
        (status, axum::Json(json)).into_response()
    }
}

/// As [`respond`], and MessagePack clients get one more field, `key`, holding `bytes` exactly
/// (a MessagePack binary), which JSON cannot carry.
pub fn respond_with_bytes(
    headers: &HeaderMap,
    status: StatusCode,
    json: Json,
    (key, bytes): (&str, &[u8]),
) -> Response {
    if !is_msgpack(headers.get(header::ACCEPT)) {
        return respond(headers, status, json);
    }
    let document = json_to_msgpack(&json).and_then(|encoded| {
        let mut value = rmpv::decode::read_value(&mut encoded.as_slice()).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding_failed",
                e.to_string(),
            )
        })?;
        if let Msgpack::Map(entries) = &mut value {
            entries.push((Msgpack::from(key), Msgpack::Binary(bytes.to_vec())));
        }
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &value).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding_failed",
                e.to_string(),
            )
        })?;
        Ok(out)
    });
    match document {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, MSGPACK)], bytes).into_response(),
        Err(error) => error.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_msgpack() {
        let document = json!({"op": "increment", "by": 3, "tags": ["a", "b"], "ratio": 0.5, "neg": -4, "none": null});
        let bytes = json_to_msgpack(&document).unwrap();
        assert_eq!(msgpack_to_json(&bytes), document);
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
        assert_eq!(
            command_from_body(&msgpack_headers, &[0x92, 0x01])
                .unwrap_err()
                .code,
            "invalid_msgpack"
        );
        assert_eq!(
            command_from_body(&msgpack_headers, &[0xc0, 0xc0])
                .unwrap_err()
                .code,
            "invalid_msgpack"
        );
        assert_eq!(
            command_from_body(&msgpack_headers, &[0x80]).unwrap(),
            vec![0x80]
        );
    }
}
