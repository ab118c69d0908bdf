//! Nexmark events and their binary encoding, defined once for the Weir host's
//! `nexmark` source (which encodes) and the guest queries (which decode).
//!
//! Layout of a record value, all integers little-endian:
//!
//! ```text
//! person:  0u8  id:u64 date_time:i64 name email credit_card city state
//! auction: 1u8  id:u64 initial_bid:u64 reserve:u64 date_time:i64 expires:i64
//!               seller:u64 category:u64 item_name description
//! bid:     2u8  auction:u64 bidder:u64 price:u64 date_time:i64 channel url
//! ```
//!
//! A string is a `u32` byte length followed by UTF-8 bytes. Decoding borrows
//! the strings from the input, so reading an event allocates nothing.

#![forbid(unsafe_code)]

/// A person registered to buy or sell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person<'a> {
    pub id: u64,
    pub name: &'a str,
    pub email: &'a str,
    pub credit_card: &'a str,
    pub city: &'a str,
    pub state: &'a str,
    pub date_time: i64,
}

/// An item put up for auction by `seller`, open until `expires`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auction<'a> {
    pub id: u64,
    pub item_name: &'a str,
    pub description: &'a str,
    pub initial_bid: u64,
    pub reserve: u64,
    pub date_time: i64,
    pub expires: i64,
    pub seller: u64,
    pub category: u64,
}

/// A bid of `price` (in cents of a dollar) by `bidder` on `auction`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bid<'a> {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub channel: &'a str,
    pub url: &'a str,
    pub date_time: i64,
}

/// One Nexmark event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Person(Person<'a>),
    Auction(Auction<'a>),
    Bid(Bid<'a>),
}

pub const PERSON: u8 = 0;
pub const AUCTION: u8 = 1;
pub const BID: u8 = 2;

/// Why a value is not an encoded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Empty,
    UnknownTag(u8),
    Truncated,
    NotUtf8,
    TrailingBytes,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Empty => write!(f, "empty value, expected a Nexmark event"),
            DecodeError::UnknownTag(t) => write!(f, "unknown Nexmark event tag {t}"),
            DecodeError::Truncated => write!(f, "Nexmark event is truncated"),
            DecodeError::NotUtf8 => write!(f, "Nexmark event holds a string that is not UTF-8"),
            DecodeError::TrailingBytes => write!(f, "bytes after the end of a Nexmark event"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl<'a> Event<'a> {
    /// Appends the event's encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Event::Person(p) => p.encode(out),
            Event::Auction(a) => a.encode(out),
            Event::Bid(b) => b.encode(out),
        }
    }

    /// The event's encoding in a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode(&mut out);
        out
    }

    /// Reads an event, borrowing its strings from `bytes`.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let (&tag, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
        let mut r = Reader(rest);
        let event = match tag {
            PERSON => Event::Person(Person {
                id: r.u64()?,
                date_time: r.i64()?,
                name: r.str()?,
                email: r.str()?,
                credit_card: r.str()?,
                city: r.str()?,
                state: r.str()?,
            }),
            AUCTION => Event::Auction(Auction {
                id: r.u64()?,
                initial_bid: r.u64()?,
                reserve: r.u64()?,
                date_time: r.i64()?,
                expires: r.i64()?,
                seller: r.u64()?,
                category: r.u64()?,
                item_name: r.str()?,
                description: r.str()?,
            }),
            BID => Event::Bid(Bid {
                auction: r.u64()?,
                bidder: r.u64()?,
                price: r.u64()?,
                date_time: r.i64()?,
                channel: r.str()?,
                url: r.str()?,
            }),
            t => return Err(DecodeError::UnknownTag(t)),
        };
        if !r.0.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(event)
    }

    /// The event's time in milliseconds.
    pub fn date_time(&self) -> i64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }
}

/// The kind of an encoded event from its first byte, without decoding it.
pub fn tag(bytes: &[u8]) -> Option<u8> {
    bytes.first().copied()
}

impl Person<'_> {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(PERSON);
        put_u64(out, self.id);
        put_u64(out, self.date_time as u64);
        for s in [
            self.name,
            self.email,
            self.credit_card,
            self.city,
            self.state,
        ] {
            put_str(out, s);
        }
    }
}

impl Auction<'_> {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(AUCTION);
        for n in [
            self.id,
            self.initial_bid,
            self.reserve,
            self.date_time as u64,
            self.expires as u64,
            self.seller,
            self.category,
        ] {
            put_u64(out, n);
        }
        put_str(out, self.item_name);
        put_str(out, self.description);
    }
}

impl Bid<'_> {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(BID);
        for n in [self.auction, self.bidder, self.price, self.date_time as u64] {
            put_u64(out, n);
        }
        put_str(out, self.channel);
        put_str(out, self.url);
    }

    /// The bid's encoding in a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode(&mut out);
        out
    }
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u32::try_from(s.len()).expect("a Nexmark string is shorter than 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.u64().map(|n| n as i64)
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let b = self.take(4)?;
        let len = u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::NotUtf8)
    }
}

/// A little-endian u64 key (the encoding of every id key in the queries).
pub fn key(id: u64) -> [u8; 8] {
    id.to_le_bytes()
}

/// Reads a little-endian u64 from an 8-byte key or value.
pub fn read_u64(bytes: &[u8]) -> Result<u64, DecodeError> {
    let b: [u8; 8] = bytes.try_into().map_err(|_| DecodeError::Truncated)?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_reverses_encode() {
        let events = [
            Event::Person(Person {
                id: 1000,
                name: "Peter Shultz",
                email: "abc@def.com",
                credit_card: "1234 5678 9012 3456",
                city: "Boise",
                state: "ID",
                date_time: 7,
            }),
            Event::Auction(Auction {
                id: 1001,
                item_name: "lamp",
                description: "",
                initial_bid: 5,
                reserve: 9,
                date_time: -3,
                expires: 100,
                seller: 1000,
                category: 12,
            }),
            Event::Bid(Bid {
                auction: 1001,
                bidder: 1000,
                price: u64::MAX,
                channel: "Google",
                url: "https://www.nexmark.com/é",
                date_time: i64::MAX,
            }),
        ];
        for e in &events {
            let bytes = e.to_bytes();
            assert_eq!(&Event::decode(&bytes).unwrap(), e);
            for cut in 0..bytes.len() {
                assert!(Event::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(Event::decode(&longer), Err(DecodeError::TrailingBytes));
        }
    }
}
