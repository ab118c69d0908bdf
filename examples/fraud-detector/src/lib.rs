//! Flags an account when a small transaction is followed, within one minute
//! of event time, by a large one: the card-testing pattern of Flink's fraud
//! detection walkthrough. Keyed by account; input values are JSON such as
//! `{"account":"a1","amount":0.5,"ts":1000}`.
//!
//! State: `small-seen` holds the event time of the last transaction if it was
//! small; an event-time timer one minute later clears it, so state does not
//! outlive the pattern.

use serde::Deserialize;
use weir_sdk::{Context, Operator, Record, Result, Setup, Timer, ValueState};

#[derive(Deserialize)]
struct Transaction {
    amount: f64,
}

#[derive(Deserialize)]
#[serde(default)]
struct Config {
    small: f64,
    large: f64,
    window_ms: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            small: 1.0,
            large: 500.0,
            window_ms: 60_000,
        }
    }
}

struct FraudDetector {
    config: Config,
    /// Event time of the last small transaction, while it is recent.
    small_seen: ValueState<i64>,
}

impl Operator for FraudDetector {
    fn init(setup: &mut Setup) -> Result<Self> {
        let config = match setup.config() {
            [] => Config::default(),
            bytes => serde_json::from_slice(bytes)?,
        };
        Ok(FraudDetector {
            config,
            small_seen: setup.value_state("small-seen"),
        })
    }

    fn process(&mut self, record: Record<'_>, ctx: &mut Context<'_>) -> Result<()> {
        let tx: Transaction = serde_json::from_slice(record.value)?;
        if let Some(small_at) = ctx.get(&self.small_seen)? {
            // Compare event times here rather than trusting the timer to have
            // fired: a whole file can arrive before the watermark moves.
            let recent = record.timestamp - small_at <= self.config.window_ms;
            if recent && tx.amount > self.config.large {
                let alert = format!(
                    r#"{{"account":"{}","small_at":{},"large_at":{},"amount":{}}}"#,
                    record.key_str()?,
                    small_at,
                    record.timestamp,
                    tx.amount
                );
                ctx.emit(record.key, alert);
            }
            ctx.clear(&self.small_seen);
            ctx.delete_timer(
                small_at + self.config.window_ms,
                weir_sdk::TimeDomain::EventTime,
            );
        }
        if tx.amount < self.config.small {
            ctx.set(&self.small_seen, &record.timestamp);
            ctx.register_event_timer(record.timestamp + self.config.window_ms);
        }
        Ok(())
    }

    fn on_timer(&mut self, _timer: Timer<'_>, ctx: &mut Context<'_>) -> Result<()> {
        ctx.clear(&self.small_seen);
        Ok(())
    }
}

weir_sdk::export_operator!(FraudDetector);
