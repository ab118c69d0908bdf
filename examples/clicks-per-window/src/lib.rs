//! Clicks per user per window: a window aggregate counting records. Which
//! windows (tumbling, sliding, session), how late data is handled and where
//! late records go are in the job spec; this is all the user code there is.

use weir_sdk::{Aggregate, Record, Result, Window};

struct Clicks;

impl Aggregate for Clicks {
    type Acc = u64;

    fn init(_config: &[u8]) -> Result<Self> {
        Ok(Clicks)
    }

    fn add(&mut self, clicks: &mut u64, _click: Record<'_>) -> Result<()> {
        *clicks += 1;
        Ok(())
    }

    fn merge(&mut self, clicks: &mut u64, other: u64) -> Result<()> {
        *clicks += other;
        Ok(())
    }

    fn result(&mut self, clicks: &u64, window: Window<'_>) -> Result<Vec<u8>> {
        Ok(format!(
            r#"{{"user":"{}","start":{},"end":{},"clicks":{clicks}}}"#,
            window.key_str()?,
            window.start,
            window.end
        )
        .into_bytes())
    }
}

weir_sdk::export_aggregate!(Clicks);
