//! A per-key counter in value state: emits (key, count) for every record, the
//! count as a little-endian u64.

use weir_sdk::{Context, Operator, Record, Result, Setup, ValueState};

struct KeyedCount {
    count: ValueState<u64>,
}

impl Operator for KeyedCount {
    fn init(setup: &mut Setup) -> Result<Self> {
        Ok(KeyedCount {
            count: setup.value_state("count"),
        })
    }

    fn process(&mut self, record: Record<'_>, ctx: &mut Context<'_>) -> Result<()> {
        let count = ctx.get(&self.count)?.unwrap_or(0) + 1;
        ctx.set(&self.count, &count);
        ctx.emit(record.key, count.to_le_bytes());
        Ok(())
    }
}

weir_sdk::export_operator!(KeyedCount);
