//! The Socket.IO Redis emitter protocol, as `@socket.io/redis-emitter` speaks it to servers
//! running the classic `@socket.io/redis-adapter`: one PUBLISH per event on
//! `<prefix>#<namespace>#<room>#`, whose message is the MessagePack of
//! `["emitter", {type: 2, data: [event, payload], nsp}, {rooms: [room], flags: {}, except: []}]`
//! (type 2 is a Socket.IO EVENT packet). The LiveEvent's JSON becomes a MessagePack map, so
//! Socket.IO clients receive it as an object. Pure: bytes in, bytes out.
//!
//! The encoding follows notepack.io (the adapter's parser) choice for choice — the smallest
//! integer format, integral numbers as integers, other numbers as float 64, keys in their
//! JSON order — so the bytes are the emitter's own for the same event.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// The emitter's uid: servers skip messages carrying their own (random) uid, never this one.
const UID: &str = "emitter";
/// Socket.IO's EVENT packet type.
const EVENT: u64 = 2;

/// The PUBLISH channel for one room, `<prefix>#<namespace>#<room>#` where `room` is
/// `room_prefix` followed by `channel`, into `out` (cleared first).
pub fn channel(out: &mut String, prefix: &str, namespace: &str, room_prefix: &str, channel: &str) {
    out.clear();
    for part in [prefix, "#", namespace, "#", room_prefix, channel, "#"] {
        out.push_str(part);
    }
}

/// The emitter's message for `event` carrying `json` (one JSON value) to one room, into `out`
/// (cleared first). Fails only when `json` is not JSON.
pub fn message(
    out: &mut Vec<u8>,
    event: &str,
    json: &[u8],
    namespace: &str,
    room: [&str; 2],
) -> Result<(), serde_json::Error> {
    out.clear();
    array_len(out, 3);
    str(out, UID);
    map_len(out, 3);
    str(out, "type");
    uint(out, EVENT);
    str(out, "data");
    array_len(out, 2);
    str(out, event);
    from_json(json, out)?;
    str(out, "nsp");
    str(out, namespace);
    map_len(out, 3);
    str(out, "rooms");
    array_len(out, 1);
    str_parts(out, room);
    str(out, "flags");
    map_len(out, 0);
    str(out, "except");
    array_len(out, 0);
    Ok(())
}

/// Appends the MessagePack of the JSON value `json` to `out`.
pub fn from_json(json: &[u8], out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let Packed(bytes) = Packed::deserialize(&mut de)?;
    de.end()?;
    out.extend_from_slice(&bytes);
    Ok(())
}

fn header(out: &mut Vec<u8>, len: usize, fix: u8, fix_max: usize, wide: [u8; 3]) {
    match len {
        n if n < fix_max => out.push(fix | n as u8),
        n if wide[0] != 0 && n < 0x100 => out.extend_from_slice(&[wide[0], n as u8]),
        n if n < 0x1_0000 => {
            out.push(wide[1]);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(wide[2]);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
}

fn array_len(out: &mut Vec<u8>, len: usize) {
    header(out, len, 0x90, 16, [0, 0xdc, 0xdd]);
}

fn map_len(out: &mut Vec<u8>, len: usize) {
    header(out, len, 0x80, 16, [0, 0xde, 0xdf]);
}

fn str(out: &mut Vec<u8>, s: &str) {
    str_parts(out, [s, ""]);
}

/// One string made of two parts.
fn str_parts(out: &mut Vec<u8>, parts: [&str; 2]) {
    header(
        out,
        parts[0].len() + parts[1].len(),
        0xa0,
        32,
        [0xd9, 0xda, 0xdb],
    );
    out.extend_from_slice(parts[0].as_bytes());
    out.extend_from_slice(parts[1].as_bytes());
}

fn uint(out: &mut Vec<u8>, v: u64) {
    match v {
        v if v < 0x80 => out.push(v as u8),
        v if v < 0x100 => out.extend_from_slice(&[0xcc, v as u8]),
        v if v < 0x1_0000 => {
            out.push(0xcd);
            out.extend_from_slice(&(v as u16).to_be_bytes());
        }
        v if v < 0x1_0000_0000 => {
            out.push(0xce);
            out.extend_from_slice(&(v as u32).to_be_bytes());
        }
        v => {
            out.push(0xcf);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

fn int(out: &mut Vec<u8>, v: i64) {
    match v {
        v if v >= 0 => uint(out, v as u64),
        v if v >= -0x20 => out.push(v as i8 as u8),
        v if v >= -0x80 => out.extend_from_slice(&[0xd0, v as i8 as u8]),
        v if v >= -0x8000 => {
            out.push(0xd1);
            out.extend_from_slice(&(v as i16).to_be_bytes());
        }
        v if v >= -0x8000_0000 => {
            out.push(0xd2);
            out.extend_from_slice(&(v as i32).to_be_bytes());
        }
        v => {
            out.push(0xd3);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

fn float(out: &mut Vec<u8>, v: f64) {
    // Integral numbers are integers in JavaScript, and notepack writes them so.
    const TWO_64: f64 = 18_446_744_073_709_551_616.0;
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if v.is_finite() && v.fract() == 0.0 && (-TWO_63..TWO_64).contains(&v) {
        match v >= 0.0 {
            true => uint(out, v as u64),
            false => int(out, v as i64),
        }
    } else {
        out.push(0xcb);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// One JSON value, already encoded as MessagePack (containers need their length first, so
/// each encodes its elements before its header).
struct Packed(Vec<u8>);

impl<'de> Deserialize<'de> for Packed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Packed, D::Error> {
        d.deserialize_any(Transcode)
    }
}

struct Transcode;

impl Transcode {
    fn one(f: impl FnOnce(&mut Vec<u8>)) -> Packed {
        let mut out = Vec::new();
        f(&mut out);
        Packed(out)
    }
}

impl<'de> Visitor<'de> for Transcode {
    type Value = Packed;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Packed, E> {
        Ok(Packed(vec![0xc0]))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Packed, E> {
        Ok(Packed(vec![if v { 0xc3 } else { 0xc2 }]))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Packed, E> {
        Ok(Transcode::one(|o| int(o, v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Packed, E> {
        Ok(Transcode::one(|o| uint(o, v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Packed, E> {
        Ok(Transcode::one(|o| float(o, v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Packed, E> {
        Ok(Transcode::one(|o| str(o, v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Packed, A::Error> {
        let (mut body, mut n) = (Vec::new(), 0);
        while let Some(Packed(item)) = seq.next_element()? {
            body.extend_from_slice(&item);
            n += 1;
        }
        let mut out = Vec::with_capacity(body.len() + 5);
        array_len(&mut out, n);
        out.extend_from_slice(&body);
        Ok(Packed(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Packed, A::Error> {
        let (mut body, mut n) = (Vec::new(), 0);
        while let Some((Packed(k), Packed(v))) = map.next_entry()? {
            body.extend_from_slice(&k);
            body.extend_from_slice(&v);
            n += 1;
        }
        let mut out = Vec::with_capacity(body.len() + 5);
        map_len(&mut out, n);
        out.extend_from_slice(&body);
        Ok(Packed(out))
    }
}
