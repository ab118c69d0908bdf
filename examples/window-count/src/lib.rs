//! Count per key per window, the result a little-endian u64: the `weir bench
//! window-count` workload (the same job as Flink's `window` mode).

use weir_sdk::{Aggregate, Record, Result, Window};

struct Count;

impl Aggregate for Count {
    type Acc = u64;

    fn init(_config: &[u8]) -> Result<Self> {
        Ok(Count)
    }

    fn add(&mut self, count: &mut u64, _record: Record<'_>) -> Result<()> {
        *count += 1;
        Ok(())
    }

    fn merge(&mut self, count: &mut u64, other: u64) -> Result<()> {
        *count += other;
        Ok(())
    }

    fn result(&mut self, count: &u64, _window: Window<'_>) -> Result<Vec<u8>> {
        Ok(count.to_le_bytes().to_vec())
    }
}

weir_sdk::export_aggregate!(Count);
