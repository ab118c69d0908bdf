//! Nexmark query 5, hot items: the auction(s) with the most bids in each
//! sliding window. This step reads `nexmark-q5-count`'s (auction, count)
//! results keyed by the window (its end - 1, which is also their event
//! time), keeps the leaders so far, and when the watermark passes the
//! window's end emits each leader as (auction, count), little-endian u64s
//! in key and value, stamped with the window's end - 1.
//!
//! ```sql
//! -- per window: auctions whose bid count is the window's highest
//! SELECT auction, count FROM bid_counts c
//! WHERE count >= ALL (SELECT count FROM bid_counts WHERE window = c.window);
//! ```

use weir_sdk::{Context, Operator, Record, Result, Setup, Timer, ValueState};

struct HotItems {
    /// The highest count of the window so far, then the auctions with it.
    leaders: ValueState<Vec<u8>>,
}

fn u64_at(bytes: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

impl Operator for HotItems {
    fn init(setup: &mut Setup) -> Result<Self> {
        Ok(HotItems {
            leaders: setup.value_state("leaders"),
        })
    }

    fn process(&mut self, record: Record<'_>, ctx: &mut Context<'_>) -> Result<()> {
        if record.value.len() != 16 {
            return Err("expected (auction, count) from nexmark-q5-count".into());
        }
        let (auction, count) = (u64_at(record.value, 0), u64_at(record.value, 1));
        let mut leaders = ctx.get(&self.leaders)?.unwrap_or_default();
        let best = if leaders.is_empty() {
            0
        } else {
            u64_at(&leaders, 0)
        };
        if count > best {
            leaders.clear();
            leaders.extend_from_slice(&count.to_le_bytes());
        }
        if count >= best {
            leaders.extend_from_slice(&auction.to_le_bytes());
            ctx.set(&self.leaders, &leaders);
        }
        ctx.register_event_timer(record.timestamp);
        Ok(())
    }

    fn on_timer(&mut self, timer: Timer<'_>, ctx: &mut Context<'_>) -> Result<()> {
        let Some(leaders) = ctx.get(&self.leaders)? else {
            return Ok(());
        };
        let count = u64_at(&leaders, 0);
        for i in 1..leaders.len() / 8 {
            let auction = u64_at(&leaders, i);
            ctx.emit_at(auction.to_le_bytes(), count.to_le_bytes(), timer.time);
        }
        ctx.clear(&self.leaders);
        Ok(())
    }
}

weir_sdk::export_operator!(HotItems);
