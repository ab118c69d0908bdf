//! How typed state values become bytes. Numbers are little-endian, strings
//! UTF-8; the encoding is part of a savepoint, so it never changes for a type.

use crate::Error;

/// A type that can live in keyed state.
pub trait StateValue: Sized {
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(bytes: &[u8]) -> Result<Self, Error>;
}

macro_rules! le_number {
    ($($t:ty),*) => {$(
        impl StateValue for $t {
            #[inline]
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }

            #[inline]
            fn decode(bytes: &[u8]) -> Result<Self, Error> {
                let array = bytes.try_into().map_err(|_| {
                    format!(
                        "state value of {} bytes is not a {}",
                        bytes.len(),
                        stringify!($t)
                    )
                })?;
                Ok(<$t>::from_le_bytes(array))
            }
        }
    )*};
}

le_number!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64);

impl StateValue for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(*self as u8);
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        match bytes {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err("state value is not a bool".into()),
        }
    }
}

impl StateValue for String {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Ok(std::str::from_utf8(bytes)?.to_owned())
    }
}

impl StateValue for Vec<u8> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Ok(bytes.to_vec())
    }
}
