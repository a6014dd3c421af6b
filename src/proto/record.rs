//! rejoin's record layer: an opt-in extension (v2 type byte `0x01`) that frames
//! the plaintext of a session so it can carry a close and a heartbeat.
//!
//! Records sit inside the session's byte stream, before encryption; counts,
//! history and resends are unchanged, so a record split by a broken link is
//! simply completed by the resend. Layout (`PROTOCOL.md` §2):
//!
//! ```text
//! DATA  0x00 len:u16le payload[len]   (1 ≤ len ≤ 65535)
//! PING  0x01                          answer with PONG
//! PONG  0x02
//! FIN   0x03                          no more DATA from this side
//! DONE  0x04                          client → server: both FINs seen, session over
//! ```

use bytes::BytesMut;

use super::{Error, Result};

/// Kind byte of a DATA record.
pub const DATA: u8 = 0x00;
/// Kind byte of a PING record.
pub const PING: u8 = 0x01;
/// Kind byte of a PONG record.
pub const PONG: u8 = 0x02;
/// Kind byte of a FIN record.
pub const FIN: u8 = 0x03;
/// Kind byte of a DONE record.
pub const DONE: u8 = 0x04;
/// The largest DATA payload.
pub const MAX_DATA: usize = u16::MAX as usize;
/// Length of a DATA header.
pub const DATA_HEADER: usize = 3;

/// A record other than DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// The peer asks for a PONG.
    Ping,
    /// The answer to our PING.
    Pong,
    /// The peer will send no more DATA.
    Fin,
    /// The client saw both FINs: the session is over.
    Done,
}

impl Control {
    /// The record's single byte.
    pub fn byte(self) -> u8 {
        match self {
            Control::Ping => PING,
            Control::Pong => PONG,
            Control::Fin => FIN,
            Control::Done => DONE,
        }
    }
}

/// The header of a DATA record with `len` payload bytes (1..=MAX_DATA).
pub fn data_header(len: usize) -> [u8; DATA_HEADER] {
    debug_assert!((1..=MAX_DATA).contains(&len));
    let [lo, hi] = (len as u16).to_le_bytes();
    [DATA, lo, hi]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a kind byte.
    Kind,
    /// Read the kind of a DATA record and `have` of its two length bytes.
    Len { have: u8, lo: u8 },
    /// Inside a DATA payload with this many bytes to go.
    Payload(usize),
}

/// Parses records from decrypted bytes, incrementally: a record may be split
/// anywhere across calls.
#[derive(Debug, Clone)]
pub struct RecordReader {
    state: State,
    fin: bool,
}

impl Default for RecordReader {
    fn default() -> Self {
        RecordReader {
            state: State::Kind,
            fin: false,
        }
    }
}

impl RecordReader {
    /// A reader at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the peer's FIN has been read.
    pub fn fin_seen(&self) -> bool {
        self.fin
    }

    /// Parses `buf` in place: DATA payloads are moved to the front of `buf`
    /// and their total length returned; every control record is passed to
    /// `on_control`, in order. Fails on an unknown kind, an empty DATA record,
    /// or DATA after FIN.
    pub fn filter(&mut self, buf: &mut [u8], mut on_control: impl FnMut(Control)) -> Result<usize> {
        let mut read = 0;
        let mut write = 0;
        while read < buf.len() {
            let (found, next) = self.step(buf, read)?;
            match found {
                Found::Data(data) => {
                    if data.start != write {
                        super::copy::move_down(buf, data.start, write, data.len());
                    }
                    write += data.len();
                }
                Found::Control(control) => on_control(control),
                Found::Header => {}
            }
            read = next;
        }
        Ok(write)
    }

    /// Like [`RecordReader::filter`], but appends the DATA payloads of `src`
    /// to `dst` instead of moving them: parsing and copying in one pass.
    pub fn filter_into(
        &mut self,
        src: &[u8],
        dst: &mut BytesMut,
        mut on_control: impl FnMut(Control),
    ) -> Result<()> {
        dst.reserve(src.len());
        let mut read = 0;
        while read < src.len() {
            let (found, next) = self.step(src, read)?;
            match found {
                Found::Data(data) => super::copy::extend(dst, &src[data]),
                Found::Control(control) => on_control(control),
                Found::Header => {}
            }
            read = next;
        }
        Ok(())
    }

    /// Parses what starts at `buf[at]` (`at < buf.len()`): a stretch of
    /// payload, a control record, or a byte of a DATA header. Returns it and
    /// where parsing goes on.
    fn step(&mut self, buf: &[u8], at: usize) -> Result<(Found, usize)> {
        match self.state {
            State::Payload(left) => {
                let n = left.min(buf.len() - at);
                self.state = if n == left {
                    State::Kind
                } else {
                    State::Payload(left - n)
                };
                Ok((Found::Data(at..at + n), at + n))
            }
            State::Len { have, lo } => {
                let b = buf[at];
                if have == 0 {
                    self.state = State::Len { have: 1, lo: b };
                    return Ok((Found::Header, at + 1));
                }
                let len = u16::from_le_bytes([lo, b]) as usize;
                if len == 0 {
                    return Err(Error::Malformed("empty DATA record"));
                }
                self.state = State::Payload(len);
                Ok((Found::Header, at + 1))
            }
            State::Kind => {
                let control = match buf[at] {
                    DATA if self.fin => return Err(Error::Malformed("DATA record after FIN")),
                    DATA => {
                        self.state = State::Len { have: 0, lo: 0 };
                        return Ok((Found::Header, at + 1));
                    }
                    PING => Control::Ping,
                    PONG => Control::Pong,
                    FIN => {
                        self.fin = true;
                        Control::Fin
                    }
                    DONE => Control::Done,
                    other => return Err(Error::UnknownType(other)),
                };
                Ok((Found::Control(control), at + 1))
            }
        }
    }
}

/// What one step of parsing found.
enum Found {
    /// Payload bytes, where they are in the buffer.
    Data(std::ops::Range<usize>),
    /// A control record.
    Control(Control),
    /// A byte of a DATA record's header.
    Header,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Rec {
        Data(Vec<u8>),
        Ctl(Control),
    }

    fn rec() -> impl Strategy<Value = Rec> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 1..300).prop_map(Rec::Data),
            Just(Rec::Ctl(Control::Ping)),
            Just(Rec::Ctl(Control::Pong)),
        ]
    }

    fn encode(recs: &[Rec], out: &mut Vec<u8>) {
        for r in recs {
            match r {
                Rec::Data(d) => {
                    out.extend_from_slice(&data_header(d.len()));
                    out.extend_from_slice(d);
                }
                Rec::Ctl(c) => out.push(c.byte()),
            }
        }
    }

    proptest! {
        #[test]
        fn records_round_trip_in_any_pieces(recs in prop::collection::vec(rec(), 0..20), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8)) {
            let mut wire = Vec::new();
            encode(&recs, &mut wire);
            wire.push(FIN);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            points.extend([0, wire.len()]);
            points.sort();
            let mut reader = RecordReader::new();
            let mut data = Vec::new();
            let mut controls = Vec::new();
            // The same pieces through the copying parser.
            let mut copier = RecordReader::new();
            let mut copied = BytesMut::new();
            let mut copied_controls = Vec::new();
            for w in points.windows(2) {
                let mut piece = wire[w[0]..w[1]].to_vec();
                copier.filter_into(&piece, &mut copied, |c| copied_controls.push(c)).unwrap();
                let n = reader.filter(&mut piece, |c| controls.push(c)).unwrap();
                data.extend_from_slice(&piece[..n]);
            }
            prop_assert_eq!(&copied[..], &data[..]);
            prop_assert_eq!(&copied_controls, &controls);
            let want_data: Vec<u8> = recs.iter().filter_map(|r| match r { Rec::Data(d) => Some(d.clone()), _ => None }).flatten().collect();
            let mut want_controls: Vec<Control> = recs.iter().filter_map(|r| match r { Rec::Ctl(c) => Some(*c), _ => None }).collect();
            want_controls.push(Control::Fin);
            prop_assert_eq!(data, want_data);
            prop_assert_eq!(controls, want_controls);
            prop_assert!(reader.fin_seen());
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = RecordReader::new().filter_into(&bytes, &mut BytesMut::new(), |_| {});
            let mut buf = bytes;
            let _ = RecordReader::new().filter(&mut buf, |_| {});
        }
    }

    #[test]
    fn rejects_bad_records() {
        let mut r = RecordReader::new();
        assert_eq!(r.filter(&mut [0x09], |_| {}), Err(Error::UnknownType(0x09)));
        let mut r = RecordReader::new();
        assert!(r.filter(&mut [DATA, 0, 0], |_| {}).is_err());
        let mut r = RecordReader::new();
        assert!(r.filter(&mut [FIN, DATA, 1, 0, 7], |_| {}).is_err());
        let mut r = RecordReader::new();
        let mut out = BytesMut::new();
        assert!(
            r.filter_into(&[DATA, 1, 0, 7, FIN, DATA], &mut out, |_| {})
                .is_err()
        );
        assert_eq!(&out[..], &[7]);
    }
}
