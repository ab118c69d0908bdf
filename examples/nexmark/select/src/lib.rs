//! A helper step of the Nexmark jobs: keeps one kind of event and re-keys
//! it (emitting under a new key is how a Weir job re-keys: the next step
//! with `input: key` receives records by that key). Its `config`:
//!
//! - `keep`: `bids`, `persons` or `auctions` (absent: every record, and
//!   values need not be events at all);
//! - `key_by`: `auction` (a bid's auction), `bidder`, `seller` (an
//!   auction's), `id` (a person's or auction's), `time` (the event time) or
//!   `window` (the start of the `window` ms tumbling window holding the
//!   event time); absent: the key stays. Keys are little-endian 8 bytes.
//!
//! ```yaml
//! - {name: auctions, module: nexmark-select, config: {keep: auctions, key_by: seller}}
//! ```

use serde::Deserialize;
use weir_nexmark::Event;
use weir_sdk::{Context, Operator, Record, Result, Setup};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    keep: Option<Kind>,
    key_by: Option<KeyBy>,
    /// Window size in ms for `key_by: window` (default 10 s).
    window: Option<i64>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Debug)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Bids,
    Persons,
    Auctions,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum KeyBy {
    Auction,
    Bidder,
    Seller,
    Id,
    Time,
    Window,
}

struct Select(Config);

impl Operator for Select {
    fn init(setup: &mut Setup) -> Result<Self> {
        let config: Config = match setup.config() {
            b"" | b"null" => Config::default(),
            json => serde_json::from_slice(json)?,
        };
        if config.window.is_some_and(|w| w <= 0) {
            return Err("`window` must be at least 1 (ms)".into());
        }
        Ok(Select(config))
    }

    fn process(&mut self, record: Record<'_>, ctx: &mut Context<'_>) -> Result<()> {
        let Config {
            keep,
            key_by,
            window,
        } = self.0;
        let window = window.unwrap_or(10_000);
        let event = match keep {
            Some(kind) => {
                let event = Event::decode(record.value)?;
                let kind_of = match event {
                    Event::Bid(_) => Kind::Bids,
                    Event::Person(_) => Kind::Persons,
                    Event::Auction(_) => Kind::Auctions,
                };
                if kind_of != kind {
                    return Ok(());
                }
                Some(event)
            }
            None => None,
        };
        let t = record.timestamp;
        let key = match (key_by, &event) {
            (None, _) => {
                ctx.emit(record.key, record.value);
                return Ok(());
            }
            (Some(KeyBy::Time), _) => t as u64,
            (Some(KeyBy::Window), _) => (t - t.rem_euclid(window)) as u64,
            (Some(KeyBy::Auction), Some(Event::Bid(b))) => b.auction,
            (Some(KeyBy::Bidder), Some(Event::Bid(b))) => b.bidder,
            (Some(KeyBy::Seller), Some(Event::Auction(a))) => a.seller,
            (Some(KeyBy::Id), Some(Event::Auction(a))) => a.id,
            (Some(KeyBy::Id), Some(Event::Person(p))) => p.id,
            _ => return Err("`key_by` names a field the kept events do not have".into()),
        };
        ctx.emit(key.to_le_bytes(), record.value);
        Ok(())
    }
}

weir_sdk::export_operator!(Select);
