//! Nexmark query 5, first step: bids per auction in each window (the job
//! gives the windows: sliding, 10 s every 2 s). The result, stamped with
//! the window's end - 1 by the host, is (auction, count) as two
//! little-endian u64s, so the next step can compare auctions of a window.

use weir_sdk::{Aggregate, Record, Result, Window};

struct BidCount;

impl Aggregate for BidCount {
    type Acc = u64;

    fn init(_config: &[u8]) -> Result<Self> {
        Ok(BidCount)
    }

    fn add(&mut self, count: &mut u64, _bid: Record<'_>) -> Result<()> {
        *count += 1;
        Ok(())
    }

    fn merge(&mut self, count: &mut u64, other: u64) -> Result<()> {
        *count += other;
        Ok(())
    }

    fn result(&mut self, count: &u64, window: Window<'_>) -> Result<Vec<u8>> {
        let mut out = window.key.to_vec();
        out.extend_from_slice(&count.to_le_bytes());
        Ok(out)
    }
}

weir_sdk::export_aggregate!(BidCount);
