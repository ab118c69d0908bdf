//! Adds up per key the decimal numbers in the values and emits the running
//! total as text: (word, "3").

use weir_sdk::{Context, Operator, Record, Result, Setup, ValueState};

struct Count {
    total: ValueState<u64>,
}

impl Operator for Count {
    fn init(setup: &mut Setup) -> Result<Self> {
        Ok(Count {
            total: setup.value_state("total"),
        })
    }

    fn process(&mut self, record: Record<'_>, ctx: &mut Context<'_>) -> Result<()> {
        let add: u64 = record.value_str()?.trim().parse()?;
        let total = ctx.get(&self.total)?.unwrap_or(0) + add;
        ctx.set(&self.total, &total);
        ctx.emit(record.key, total.to_string());
        Ok(())
    }
}

weir_sdk::export_operator!(Count);
