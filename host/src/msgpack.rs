//! MessagePack at the host's edges, read without building value trees: checking that bytes are
//! exactly one well-formed value, and transcoding that value to JSON text.
//!
//! Commands from clients, and replies, events and states from guests, are MessagePack the host
//! did not write. Decoding them into generic values (`rmpv`, `serde_json::Value`) costs tens of
//! bytes of host memory per payload byte and recurses once per nesting level, so a few hundred
//! bytes of nested arrays overflow the stack and a guest's 64 MiB reply costs gigabytes. Both
//! functions here walk the bytes with an explicit stack, refuse nesting deeper than
//! [`DEPTH_MAX`] (JSON's limit in the API) and compare every declared length with the bytes that
//! are really there before trusting it, so nothing is allocated on a length's word. Checking
//! allocates nothing; transcoding writes at most [`JSON_BYTES_PER_BYTE_MAX`] bytes of JSON per
//! byte of MessagePack.

use std::fmt;
use std::io::Write;

/// Nesting levels a value may have: the same as the JSON parser's limit for request bodies.
pub const DEPTH_MAX: usize = 128;

/// The most JSON text one MessagePack byte can become: the bound on a transcoded payload's size.
/// The worst case is a map keyed by one-byte extension values (`{"ext_type":-128,"data":[255]}`,
/// escaped into a key string, from 3 bytes); an array of nils is 5 bytes per byte, ordinary
/// documents about 1.
pub const JSON_BYTES_PER_BYTE_MAX: usize = 12;

/// Why bytes are not exactly one well-formed MessagePack value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MsgpackError {
    Empty,
    /// The bytes end inside a value.
    Truncated {
        offset: usize,
    },
    /// `0xc1`, which MessagePack never uses.
    Reserved {
        offset: usize,
    },
    /// A declared length asks for more bytes or items than could follow.
    LengthBeyondInput {
        offset: usize,
        declared: u64,
    },
    TooDeep {
        offset: usize,
    },
    /// Bytes follow the value.
    Trailing {
        bytes: usize,
    },
}

impl fmt::Display for MsgpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsgpackError::Empty => write!(f, "no MessagePack value (0 bytes)"),
            MsgpackError::Truncated { offset } => {
                write!(f, "the bytes end inside a value (at byte {offset})")
            }
            MsgpackError::Reserved { offset } => {
                write!(f, "byte {offset} is 0xc1, which MessagePack never uses")
            }
            MsgpackError::LengthBeyondInput { offset, declared } => write!(
                f,
                "the value at byte {offset} declares {declared} bytes or items, more than follow"
            ),
            MsgpackError::TooDeep { offset } => write!(
                f,
                "values are nested more than {DEPTH_MAX} levels deep (at byte {offset})"
            ),
            MsgpackError::Trailing { bytes } => {
                write!(f, "{bytes} bytes follow the MessagePack value")
            }
        }
    }
}

impl std::error::Error for MsgpackError {}

/// Checks that `bytes` hold exactly one well-formed value, nested at most [`DEPTH_MAX`] deep.
pub fn check_one_value(bytes: &[u8]) -> Result<(), MsgpackError> {
    if bytes.is_empty() {
        return Err(MsgpackError::Empty);
    }
    let mut reader = Reader { bytes, pos: 0 };
    skip_value(&mut reader)?;
    match bytes.len() - reader.pos {
        0 => Ok(()),
        bytes => Err(MsgpackError::Trailing { bytes }),
    }
}

/// The JSON text of the one value `bytes` hold. Strings that are not UTF-8 are shown lossily,
/// binaries as arrays of numbers, extensions as `{"ext_type": t, "data": [...]}`, map keys that
/// are not strings as their JSON text in a string, and non-finite floats as `null`.
pub fn to_json(bytes: &[u8]) -> Result<String, MsgpackError> {
    let mut out = Vec::new();
    write_json(bytes, &mut out)?;
    // Only ASCII structure and serde_json-escaped or lossy-converted strings are written.
    Ok(String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into()))
}

/// Appends the JSON text of the one value `bytes` hold to `out`, as [`to_json`] does; writes
/// nothing when the bytes are not one well-formed value.
pub fn write_json(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), MsgpackError> {
    check_one_value(bytes)?;
    transcode(bytes, out);
    Ok(())
}

/// One token of the input: a scalar, or the header of a container with its item count.
enum Token<'a> {
    Nil,
    Bool(bool),
    Uint(u64),
    Int(i64),
    Float(f64),
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Ext(i8, &'a [u8]),
    Array(u64),
    Map(u64),
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], MsgpackError> {
        if n > self.remaining() {
            return Err(MsgpackError::Truncated {
                offset: self.bytes.len(),
            });
        }
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn uint(&mut self, width: usize) -> Result<u64, MsgpackError> {
        Ok(self
            .take(width)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// `n` bytes, once checked against what is left.
    fn sized(&mut self, offset: usize, n: u64) -> Result<&'a [u8], MsgpackError> {
        if n > self.remaining() as u64 {
            return Err(MsgpackError::LengthBeyondInput {
                offset,
                declared: n,
            });
        }
        self.take(n as usize)
    }

    /// A container header, once its items could fit in what is left (each takes a byte).
    fn container(&self, offset: usize, items: u64) -> Result<u64, MsgpackError> {
        if items > self.remaining() as u64 {
            return Err(MsgpackError::LengthBeyondInput {
                offset,
                declared: items,
            });
        }
        Ok(items)
    }

    fn next(&mut self) -> Result<Token<'a>, MsgpackError> {
        let offset = self.pos;
        let marker = self.take(1)?[0];
        let token = match marker {
            0x00..=0x7f => Token::Uint(u64::from(marker)),
            0x80..=0x8f => Token::Map(self.container(offset, 2 * u64::from(marker & 0x0f))? / 2),
            0x90..=0x9f => Token::Array(self.container(offset, u64::from(marker & 0x0f))?),
            0xa0..=0xbf => Token::Str(self.sized(offset, u64::from(marker & 0x1f))?),
            0xc0 => Token::Nil,
            0xc1 => return Err(MsgpackError::Reserved { offset }),
            0xc2 => Token::Bool(false),
            0xc3 => Token::Bool(true),
            0xc4..=0xc6 => {
                let len = self.uint(1 << (marker - 0xc4))?;
                Token::Bin(self.sized(offset, len)?)
            }
            0xc7..=0xc9 => {
                let len = self.uint(1 << (marker - 0xc7))?;
                let kind = self.take(1)?[0] as i8;
                Token::Ext(kind, self.sized(offset, len)?)
            }
            0xca => Token::Float(f64::from(f32::from_bits(self.uint(4)? as u32))),
            0xcb => Token::Float(f64::from_bits(self.uint(8)?)),
            0xcc..=0xcf => Token::Uint(self.uint(1 << (marker - 0xcc))?),
            0xd0..=0xd3 => {
                let width = 1usize << (marker - 0xd0);
                let raw = self.uint(width)?;
                let shift = 64 - 8 * width as u32;
                Token::Int(((raw << shift) as i64) >> shift)
            }
            0xd4..=0xd8 => {
                let kind = self.take(1)?[0] as i8;
                Token::Ext(kind, self.take(1 << (marker - 0xd4))?)
            }
            0xd9..=0xdb => {
                let len = self.uint(1 << (marker - 0xd9))?;
                Token::Str(self.sized(offset, len)?)
            }
            0xdc | 0xdd => {
                let items = self.uint(if marker == 0xdc { 2 } else { 4 })?;
                Token::Array(self.container(offset, items)?)
            }
            0xde | 0xdf => {
                let entries = self.uint(if marker == 0xde { 2 } else { 4 })?;
                Token::Map(self.container(offset, entries.saturating_mul(2))? / 2)
            }
            0xe0..=0xff => Token::Int(i64::from(marker as i8)),
        };
        Ok(token)
    }
}

/// Reads past one value, with an explicit stack of items still to read per open container.
fn skip_value(reader: &mut Reader<'_>) -> Result<(), MsgpackError> {
    let mut open: Vec<u64> = Vec::new();
    let mut to_read = 1u64;
    loop {
        while to_read == 0 {
            match open.pop() {
                Some(outer) => to_read = outer,
                None => return Ok(()),
            }
        }
        to_read -= 1;
        let offset = reader.pos;
        let items = match reader.next()? {
            Token::Array(items) => items,
            Token::Map(entries) => entries * 2,
            _ => continue,
        };
        if items > 0 {
            if open.len() + 1 >= DEPTH_MAX {
                return Err(MsgpackError::TooDeep { offset });
            }
            open.push(to_read);
            to_read = items;
        }
    }
}

/// An open container while transcoding: items left, whether it is a map, whether an item was
/// written yet.
struct Open {
    left: u64,
    map: bool,
    written: bool,
}

/// Writes the JSON text of the checked value in `bytes` to `out`.
fn transcode(bytes: &[u8], out: &mut Vec<u8>) {
    let mut reader = Reader { bytes, pos: 0 };
    let mut open: Vec<Open> = Vec::new();
    loop {
        // Close what is complete, and write the separator the next item needs.
        let mut is_key = false;
        while let Some(top) = open.last_mut() {
            if top.left > 0 {
                let key_position = top.map && top.left % 2 == 0;
                if !top.map || key_position {
                    if top.written {
                        out.push(b',');
                    }
                } else {
                    out.push(b':');
                }
                top.written = true;
                top.left -= 1;
                is_key = key_position;
                break;
            }
            out.push(if top.map { b'}' } else { b']' });
            open.pop();
        }
        if open.is_empty() && reader.pos > 0 {
            return;
        }
        let start = reader.pos;
        // The bytes were checked: a token is always there.
        let Ok(token) = reader.next() else { return };
        if is_key {
            write_key(bytes, start, token, &mut reader, out);
            continue;
        }
        match token {
            Token::Array(items) => {
                out.push(b'[');
                open.push(Open {
                    left: items,
                    map: false,
                    written: false,
                });
            }
            Token::Map(entries) => {
                out.push(b'{');
                open.push(Open {
                    left: entries * 2,
                    map: true,
                    written: false,
                });
            }
            scalar => write_scalar(&scalar, out),
        }
    }
}

/// A map key as a JSON string: a string key as it is, any other key as its JSON text.
fn write_key(
    bytes: &[u8],
    start: usize,
    token: Token<'_>,
    reader: &mut Reader<'_>,
    out: &mut Vec<u8>,
) {
    let text = match token {
        Token::Str(s) => String::from_utf8_lossy(s).into_owned(),
        Token::Array(_) | Token::Map(_) => {
            // A container key: find its end, then transcode that slice on its own.
            reader.pos = start;
            if skip_value(reader).is_err() {
                return;
            }
            let mut nested = Vec::new();
            transcode(&bytes[start..reader.pos], &mut nested);
            String::from_utf8_lossy(&nested).into_owned()
        }
        scalar => {
            let mut text = Vec::new();
            write_scalar(&scalar, &mut text);
            String::from_utf8_lossy(&text).into_owned()
        }
    };
    let _ = serde_json::to_writer(&mut *out, &text);
}

fn write_scalar(token: &Token<'_>, out: &mut Vec<u8>) {
    // Writes into a Vec cannot fail.
    let _ = match token {
        Token::Nil => out.write_all(b"null"),
        Token::Bool(b) => write!(out, "{b}"),
        Token::Uint(u) => write!(out, "{u}"),
        Token::Int(i) => write!(out, "{i}"),
        Token::Float(f) if f.is_finite() => serde_json::to_writer(&mut *out, f).map_err(Into::into),
        Token::Float(_) => out.write_all(b"null"),
        Token::Str(s) => {
            serde_json::to_writer(&mut *out, &String::from_utf8_lossy(s)).map_err(Into::into)
        }
        Token::Bin(data) => write_numbers(data, out),
        Token::Ext(kind, data) => {
            let _ = write!(out, "{{\"ext_type\":{kind},\"data\":");
            write_numbers(data, out).and_then(|()| out.write_all(b"}"))
        }
        Token::Array(_) | Token::Map(_) => Ok(()),
    };
}

fn write_numbers(data: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    out.push(b'[');
    for (i, byte) in data.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write!(out, "{byte}")?;
    }
    out.push(b']');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn named(value: &serde_json::Value) -> Vec<u8> {
        rmp_serde::to_vec_named(value).unwrap()
    }

    #[test]
    fn documents_transcode_to_the_same_json() {
        let document = json!({"op": "increment", "by": 3, "tags": ["a", "b"], "ratio": 0.5,
            "neg": -4, "none": null, "big": u64::MAX, "small": i64::MIN, "nested": {"x": [[], {}]}});
        let text = to_json(&named(&document)).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            document
        );
    }

    #[test]
    fn odd_values_have_a_json_form() {
        // {1: bin[1,2], nil: ext(5,[9]), [1]: nan, "s": non-UTF-8 string}
        let bytes = [
            0x84, 0x01, 0xc4, 0x02, 1, 2, 0xc0, 0xd4, 0x05, 0x09, 0x91, 0x01, 0xcb, 0x7f, 0xf8, 0,
            0, 0, 0, 0, 0, 0xa1, b's', 0xa1, 0xff,
        ];
        let text = to_json(&bytes).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            json!({"1": [1, 2], "null": {"ext_type": 5, "data": [9]}, "[1]": null, "s": "\u{fffd}"})
        );
    }

    #[test]
    fn malformed_input_is_named() {
        assert_eq!(check_one_value(&[]), Err(MsgpackError::Empty));
        assert_eq!(
            check_one_value(&[0xc1]),
            Err(MsgpackError::Reserved { offset: 0 })
        );
        assert_eq!(
            check_one_value(&[0xc0, 0xc0]),
            Err(MsgpackError::Trailing { bytes: 1 })
        );
        assert_eq!(
            check_one_value(&[0xcd, 0x01]),
            Err(MsgpackError::Truncated { offset: 2 })
        );
        assert_eq!(
            check_one_value(&[0x92, 0x01]),
            Err(MsgpackError::LengthBeyondInput {
                offset: 0,
                declared: 2
            })
        );
        // An array declaring 2^32-1 items in 5 bytes is refused before anything is read.
        assert_eq!(
            check_one_value(&[0xdd, 0xff, 0xff, 0xff, 0xff]),
            Err(MsgpackError::LengthBeyondInput {
                offset: 0,
                declared: u32::MAX as u64
            })
        );
        assert!(matches!(
            check_one_value(&[0xc6, 0x7f, 0xff, 0xff, 0xff, 0]),
            Err(MsgpackError::LengthBeyondInput { .. })
        ));
    }

    #[test]
    fn nesting_is_bounded_without_recursion() {
        let nested = |depth: usize| {
            let mut bytes = vec![0x91; depth];
            bytes.push(0xc0);
            bytes
        };
        assert!(check_one_value(&nested(DEPTH_MAX - 1)).is_ok());
        assert!(matches!(
            check_one_value(&nested(DEPTH_MAX)),
            Err(MsgpackError::TooDeep { .. })
        ));
        // Far deeper than any stack would survive with one frame per level.
        assert!(matches!(
            check_one_value(&nested(1_000_000)),
            Err(MsgpackError::TooDeep { .. })
        ));
        let text = to_json(&nested(DEPTH_MAX - 1)).unwrap();
        assert_eq!(text.len(), 2 * (DEPTH_MAX - 1) + 4);
        // serde_json can read back everything the transcoder writes.
        serde_json::from_str::<serde_json::Value>(&text).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Arbitrary bytes: the checker and the transcoder never panic, agree with each other,
        /// and the JSON stays within its bound.
        #[test]
        fn arbitrary_bytes_are_checked_safely(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            match check_one_value(&bytes) {
                Ok(()) => {
                    let text = to_json(&bytes).unwrap();
                    prop_assert!(text.len() <= JSON_BYTES_PER_BYTE_MAX * bytes.len());
                    prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
                }
                Err(_) => prop_assert!(to_json(&bytes).is_err()),
            }
        }

        /// The checker accepts what a reference decoder (rmpv) reads as one value, except the
        /// marker 0xc1 (which rmpv reads as nil and MessagePack never uses), and nothing else.
        #[test]
        fn the_checker_agrees_with_rmpv(bytes in proptest::collection::vec(any::<u8>(), 1..64)) {
            let mut reader = &bytes[..];
            let rmpv_accepts = rmpv::decode::read_value(&mut reader).is_ok() && reader.is_empty();
            let accepts = check_one_value(&bytes).is_ok();
            prop_assert!(!accepts || rmpv_accepts);
            if !bytes.contains(&0xc1) {
                prop_assert_eq!(accepts, rmpv_accepts);
            }
        }
    }
}
