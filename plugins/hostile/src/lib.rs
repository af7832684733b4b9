//! A plugin that misbehaves on command, so tests can check that the host contains it.
//!
//! `{"op":"spin"}` loops forever, `{"op":"hog"}` allocates until memory runs out, `{"op":"trap"}`
//! panics; `{"op":"echo","text":"…"}` behaves, to show the host still serves calls afterwards.

use serde::Deserialize;
use weft_guest::{Context, Decision, Entity};

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    Spin,
    Hog,
    Trap,
    Echo { text: String },
}

pub struct Hostile;

impl Entity for Hostile {
    type State = ();
    type Command = Command;
    type Event = ();
    type Reply = String;
    type Error = String;

    fn handle(_: &(), _: &Context, command: Command) -> Result<Decision<(), String>, String> {
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
            Command::Echo { text } => Ok(Decision::reply(text)),
        }
    }

    fn apply(_: (), _: &Context, _: &()) {}
}

weft_guest::export_entity!(Hostile);
