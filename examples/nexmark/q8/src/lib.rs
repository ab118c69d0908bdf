//! Nexmark query 8, monitor new users: persons who opened an auction in the
//! same 10 s tumbling window in which they registered. A two-input
//! operator: input 0 is persons keyed by id, input 1 auctions keyed by
//! seller (`from: [persons, auctions]`, `input: key`), so a person and
//! their auctions meet under one key. Emits (person id, window start +
//! name): key the id as a little-endian u64, value the window start as a
//! little-endian i64 followed by the name, stamped with the window's end - 1.
//!
//! ```sql
//! SELECT P.id, P.name, P.starttime
//! FROM (SELECT id, name, TUMBLE_START(date_time, 10s) AS starttime FROM person
//!       GROUP BY id, name, TUMBLE(date_time, 10s)) P
//! JOIN (SELECT seller, TUMBLE_START(date_time, 10s) AS starttime FROM auction
//!       GROUP BY seller, TUMBLE(date_time, 10s)) A
//! ON P.id = A.seller AND P.starttime = A.starttime;
//! ```
//!
//! Either side may come first (a seller can open an auction before the
//! registration reaches this operator); whichever completes the pair emits
//! it, once. State lives until the watermark passes its window's end.

use weir_nexmark::Event;
use weir_sdk::{Context, Operator, Record, Result, Setup, Timer, ValueState};

const WINDOW: i64 = 10_000;
const PERSONS: u32 = 0;

struct NewUsers {
    /// The person's name and the start of the window they registered in.
    name: ValueState<String>,
    registered: ValueState<i64>,
    /// Starts of the windows in which the seller opened an auction
    /// (little-endian i64s).
    auctions: ValueState<Vec<u8>>,
}

fn windows(bytes: &[u8]) -> impl Iterator<Item = i64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|w| i64::from_le_bytes(w.try_into().expect("8 bytes")))
}

impl NewUsers {
    fn emit(&self, ctx: &mut Context<'_>, id: &[u8], name: &str, start: i64) {
        let mut value = start.to_le_bytes().to_vec();
        value.extend_from_slice(name.as_bytes());
        ctx.emit_at(id, value, start + WINDOW - 1);
    }
}

impl Operator for NewUsers {
    fn init(setup: &mut Setup) -> Result<Self> {
        Ok(NewUsers {
            name: setup.value_state("name"),
            registered: setup.value_state("registered"),
            auctions: setup.value_state("auctions"),
        })
    }

    fn process(&mut self, record: Record<'_>, ctx: &mut Context<'_>) -> Result<()> {
        let t = record.timestamp;
        let start = t - t.rem_euclid(WINDOW);
        let auctions = ctx.get(&self.auctions)?.unwrap_or_default();
        let seen = windows(&auctions).any(|w| w == start);
        match (record.input, Event::decode(record.value)?) {
            (PERSONS, Event::Person(p)) => {
                if seen {
                    self.emit(ctx, record.key, p.name, start);
                }
                ctx.set(&self.name, &p.name.to_owned());
                ctx.set(&self.registered, &start);
            }
            (_, Event::Auction(_)) => {
                if seen {
                    return Ok(()); // this window's pair, if any, is out already
                }
                if ctx.get(&self.registered)? == Some(start)
                    && let Some(name) = ctx.get(&self.name)?
                {
                    self.emit(ctx, record.key, &name, start);
                }
                let mut auctions = auctions;
                auctions.extend_from_slice(&start.to_le_bytes());
                ctx.set(&self.auctions, &auctions);
            }
            (input, _) => return Err(format!("unexpected event on input {input}").into()),
        }
        ctx.register_event_timer(start + WINDOW - 1);
        Ok(())
    }

    fn on_timer(&mut self, timer: Timer<'_>, ctx: &mut Context<'_>) -> Result<()> {
        // Windows that ended by `timer.time` can match nothing any more.
        let open = |start: i64| start + WINDOW - 1 > timer.time;
        if ctx.get(&self.registered)?.is_some_and(|s| !open(s)) {
            ctx.clear(&self.name);
            ctx.clear(&self.registered);
        }
        if let Some(auctions) = ctx.get(&self.auctions)? {
            let kept: Vec<u8> = windows(&auctions)
                .filter(|&s| open(s))
                .flat_map(i64::to_le_bytes)
                .collect();
            if kept.is_empty() {
                ctx.clear(&self.auctions);
            } else {
                ctx.set(&self.auctions, &kept);
            }
        }
        Ok(())
    }
}

weir_sdk::export_operator!(NewUsers);
