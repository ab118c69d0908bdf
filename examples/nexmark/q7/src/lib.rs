//! Nexmark query 7, highest bid: the bid(s) with the highest price in each
//! 10 s tumbling window. Bids arrive keyed by their window's start (see the
//! job: `nexmark-select` with `key_by: window`); this step keeps the best
//! bids so far and, when the watermark passes the window's end, emits each
//! as (auction, bid), stamped with the window's end - 1.
//!
//! ```sql
//! SELECT B.* FROM bid B JOIN (SELECT MAX(price) AS maxprice, window_end
//!   FROM TUMBLE(bid, date_time, 10s) GROUP BY window_end) M
//! ON B.price = M.maxprice AND B.date_time in M's window;
//! ```

use weir_nexmark::Event;
use weir_sdk::{Context, Operator, Record, Result, Setup, Timer, ValueState};

const WINDOW: i64 = 10_000;

struct HighestBid {
    /// The highest price so far, then each bid with it (u32 length, bytes).
    best: ValueState<Vec<u8>>,
}

impl Operator for HighestBid {
    fn init(setup: &mut Setup) -> Result<Self> {
        Ok(HighestBid {
            best: setup.value_state("best"),
        })
    }

    fn process(&mut self, record: Record<'_>, ctx: &mut Context<'_>) -> Result<()> {
        let Event::Bid(bid) = Event::decode(record.value)? else {
            return Err("nexmark-q7 reads bids only".into());
        };
        let mut best = ctx.get(&self.best)?.unwrap_or_default();
        let top = best
            .get(..8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
        if best.is_empty() || bid.price > top {
            best.clear();
            best.extend_from_slice(&bid.price.to_le_bytes());
        }
        if bid.price >= top {
            best.extend_from_slice(&(record.value.len() as u32).to_le_bytes());
            best.extend_from_slice(record.value);
            ctx.set(&self.best, &best);
        }
        let t = record.timestamp;
        ctx.register_event_timer(t - t.rem_euclid(WINDOW) + WINDOW - 1);
        Ok(())
    }

    fn on_timer(&mut self, timer: Timer<'_>, ctx: &mut Context<'_>) -> Result<()> {
        let Some(best) = ctx.get(&self.best)? else {
            return Ok(());
        };
        let mut rest = &best[8..];
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let (bid, tail) = tail.split_at(u32::from_le_bytes(*len) as usize);
            if let Event::Bid(b) = Event::decode(bid)? {
                ctx.emit_at(b.auction.to_le_bytes(), bid, timer.time);
            }
            rest = tail;
        }
        ctx.clear(&self.best);
        Ok(())
    }
}

weir_sdk::export_operator!(HighestBid);
