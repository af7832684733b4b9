//! A plugin that misbehaves on command, so tests can check that the host contains it.
//!
//! It implements the first `entity` interface (world `entity-plugin`, state passed in and out as
//! bytes) with its own bindings, not through the SDK's typed `Entity`, so it can hand the host
//! anything a guest could: output of any size, bytes that are not MessagePack,
//! endless loops and sleeps, floods of log lines. Commands (MessagePack maps, `op` names one):
//!
//! - `spin` loops forever; `hog` allocates until memory runs out; `trap` panics;
//!   `sleep {ms}` sleeps through WASI; `work {iterations}` computes for a while and answers;
//!   `echo {text}` behaves, to show the host still serves.
//! - `reply {shape, bytes}`: a well-formed reply of about `bytes` bytes, shaped `bin`, `str`, or
//!   `nils` (an array of nils: the most host memory per byte for a generic decoder).
//! - `deep_reply {depth}`: arrays nested `depth` deep.
//! - `raw_reply {bytes}` / `raw_event {bytes}`: exactly these bytes as the reply, or as the one
//!   event (any bytes: not MessagePack, trailing bytes, empty).
//! - `events {count, bytes}`: `count` events of about `bytes` bytes each.
//! - `grow_state {bytes}`: one event whose application makes the state about `bytes` bytes.
//! - `error {bytes}`: a rejection whose text is `bytes` long.
//! - `log {lines, bytes}`: `lines` log lines of `bytes` bytes each, then a reply.
//!
//! The `wrong-signatures` test variant (`test-only/hostile-wrong-signatures.wasm`) exports the
//! entity interface's name with the right function names and the wrong function types.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    Spin,
    Hog,
    Trap,
    Sleep { ms: u64 },
    Work { iterations: u64 },
    Echo { text: String },
    Reply { shape: Shape, bytes: usize },
    DeepReply { depth: usize },
    RawReply { bytes: Vec<u8> },
    RawEvent { bytes: Vec<u8> },
    Events { count: usize, bytes: usize },
    GrowState { bytes: usize },
    Error { bytes: usize },
    Log { lines: usize, bytes: usize },
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    Bin,
    Str,
    Nils,
}

/// What a command decides: its events and its reply, as raw bytes.
pub struct Outcome {
    pub events: Vec<Vec<u8>>,
    pub reply: Vec<u8>,
}

/// The MessagePack `nil`: the hostile entity's initial state and its reply when it has nothing
/// to say.
pub const NIL: u8 = 0xc0;

/// Handles a command; `log` writes a guest log line.
pub fn handle(command: &[u8], log: impl Fn(&str)) -> Result<Outcome, String> {
    let command: Command = weft_guest::codec::decode("command", command)?;
    let reply = |reply: Vec<u8>| {
        Ok(Outcome {
            events: Vec::new(),
            reply,
        })
    };
    match command {
        Command::Spin => loop {
            std::hint::black_box(());
        },
        Command::Hog => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        Command::Trap => panic!("deliberate trap"),
        Command::Sleep { ms } => {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            reply(vec![NIL])
        }
        Command::Work { iterations } => {
            let mut acc = 0u64;
            for i in 0..iterations {
                acc = std::hint::black_box(acc.wrapping_mul(31).wrapping_add(i));
            }
            reply(string(acc.to_string().as_bytes()))
        }
        Command::Echo { text } => reply(string(text.as_bytes())),
        Command::Reply { shape, bytes } => reply(shaped(shape, bytes)),
        Command::DeepReply { depth } => {
            let mut nested = vec![0x91; depth];
            nested.push(NIL);
            reply(nested)
        }
        Command::RawReply { bytes } => reply(bytes),
        Command::RawEvent { bytes } => Ok(Outcome {
            events: vec![bytes],
            reply: vec![NIL],
        }),
        Command::Events { count, bytes } => Ok(Outcome {
            events: (0..count).map(|_| shaped(Shape::Bin, bytes)).collect(),
            reply: vec![NIL],
        }),
        Command::GrowState { bytes } => Ok(Outcome {
            // A map {"state_bytes": bytes}.
            events: vec![grow_event(bytes)],
            reply: vec![NIL],
        }),
        Command::Error { bytes } => Err("e".repeat(bytes)),
        Command::Log { lines, bytes } => {
            let line = "l".repeat(bytes);
            for _ in 0..lines {
                log(&line);
            }
            reply(vec![NIL])
        }
    }
}

/// Applies an event: a `grow_state` event makes the state that large; every other leaves `nil`.
pub fn apply(event: &[u8]) -> Vec<u8> {
    #[derive(Deserialize)]
    struct Grow {
        state_bytes: usize,
    }
    match weft_guest::codec::decode::<Grow>("event", event) {
        Ok(grow) => shaped(Shape::Bin, grow.state_bytes),
        Err(_) => vec![NIL],
    }
}

fn grow_event(bytes: usize) -> Vec<u8> {
    let mut event = vec![0x81];
    event.extend(string(b"state_bytes"));
    event.push(0xcf);
    event.extend((bytes as u64).to_be_bytes());
    event
}

/// A well-formed value of about `bytes` bytes.
fn shaped(shape: Shape, bytes: usize) -> Vec<u8> {
    let len = (bytes as u32).to_be_bytes();
    let mut value = Vec::with_capacity(bytes + 5);
    match shape {
        Shape::Bin => {
            value.push(0xc6);
            value.extend(len);
            value.resize(5 + bytes, 0xab);
        }
        Shape::Str => {
            value.push(0xdb);
            value.extend(len);
            value.resize(5 + bytes, b's');
        }
        Shape::Nils => {
            value.push(0xdd);
            value.extend(len);
            value.resize(5 + bytes, NIL);
        }
    }
    value
}

fn string(text: &[u8]) -> Vec<u8> {
    let mut value = vec![0xdb];
    value.extend((text.len() as u32).to_be_bytes());
    value.extend(text);
    value
}

#[cfg(all(target_arch = "wasm32", not(feature = "wrong-signatures")))]
mod export {
    // The first `entity` interface, state passed in and out as bytes: the SDK builds
    // `resident-entity`, and the host still loads components of this world.
    weft_guest::__private::wit_bindgen::generate!({
        path: "../../wit",
        world: "weft:plugin/entity-plugin",
        runtime_path: "weft_guest::__private::wit_bindgen::rt",
    });

    use exports::weft::plugin::entity::{Decision, Guest};
    use weft::plugin::host::{Level, log};
    use weft::plugin::types::{Context, Envelope};

    struct Hostile;

    impl Guest for Hostile {
        fn init(_: Context) -> Vec<u8> {
            vec![super::NIL]
        }

        fn handle_command(_: Context, _: Vec<u8>, command: Vec<u8>) -> Result<Decision, String> {
            let log = |line: &str| log(Level::Info, line);
            super::handle(&command, log).map(|outcome| Decision {
                events: outcome.events,
                reply: outcome.reply,
            })
        }

        fn apply_event(_: Context, _: Vec<u8>, event: Envelope) -> Vec<u8> {
            super::apply(&event.payload)
        }
    }

    export!(Hostile);
}

#[cfg(all(target_arch = "wasm32", feature = "wrong-signatures"))]
mod wrong_signatures {
    weft_guest::__private::wit_bindgen::generate!({
        inline: "
            package weft:plugin@0.1.0;
            interface entity {
                init: func() -> u32;
                handle-command: func(command: string) -> string;
                apply-event: func(state: u32) -> u32;
            }
            world wrong-signatures { export entity; }
        ",
        runtime_path: "weft_guest::__private::wit_bindgen::rt",
    });

    struct WrongSignatures;

    impl exports::weft::plugin::entity::Guest for WrongSignatures {
        fn init() -> u32 {
            0
        }

        fn handle_command(command: String) -> String {
            command
        }

        fn apply_event(state: u32) -> u32 {
            state
        }
    }

    export!(WrongSignatures);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(json: &str) -> Vec<u8> {
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        rmp_serde::to_vec_named(&value).unwrap()
    }

    fn decode(bytes: &[u8]) -> serde_json::Value {
        rmp_serde::from_slice(bytes).unwrap()
    }

    #[test]
    fn shaped_output_is_well_formed_and_sized() {
        for shape in ["bin", "str", "nils"] {
            let json = format!(r#"{{"op":"reply","shape":"{shape}","bytes":1000}}"#);
            let out = handle(&command(&json), |_| {}).unwrap();
            assert_eq!(out.reply.len(), 1005);
            let value: rmpv::Value = rmp_serde::from_slice(&out.reply).unwrap();
            assert!(!value.is_nil(), "{shape}");
        }
    }

    #[test]
    fn grow_state_events_grow_the_state() {
        let out = handle(&command(r#"{"op":"grow_state","bytes":64}"#), |_| {}).unwrap();
        assert_eq!(apply(&out.events[0]).len(), 69);
        assert_eq!(apply(&[0x90]), vec![NIL]);
    }

    #[test]
    fn raw_bytes_pass_through_and_echo_behaves() {
        let out = handle(&command(r#"{"op":"raw_reply","bytes":[193,1]}"#), |_| {}).unwrap();
        assert_eq!(out.reply, vec![0xc1, 1]);
        let out = handle(&command(r#"{"op":"echo","text":"hi"}"#), |_| {}).unwrap();
        assert_eq!(decode(&out.reply), serde_json::json!("hi"));
        let lines = std::cell::Cell::new(0);
        handle(&command(r#"{"op":"log","lines":3,"bytes":5}"#), |_| {
            lines.set(lines.get() + 1)
        })
        .unwrap();
        assert_eq!(lines.get(), 3);
        assert_eq!(
            handle(&command(r#"{"op":"error","bytes":4}"#), |_| {}).err(),
            Some("eeee".into())
        );
    }
}
