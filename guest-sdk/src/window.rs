//! Window aggregates: the host assigns records to windows, keeps each
//! (key, window) accumulator as keyed state, fires windows when the
//! watermark passes their end, merges session windows and handles late data;
//! the guest supplies only the aggregation, incrementally (add, merge,
//! result), so a window job is a few lines of user code.
//!
//! ```no_run
//! use weir_sdk::{Aggregate, Record, Result, Window};
//!
//! struct Clicks;
//!
//! impl Aggregate for Clicks {
//!     type Acc = u64;
//!     fn init(_config: &[u8]) -> Result<Self> { Ok(Clicks) }
//!     fn add(&mut self, acc: &mut u64, _record: Record<'_>) -> Result<()> { *acc += 1; Ok(()) }
//!     fn merge(&mut self, acc: &mut u64, other: u64) -> Result<()> { *acc += other; Ok(()) }
//!     fn result(&mut self, acc: &u64, window: Window<'_>) -> Result<Vec<u8>> {
//!         Ok(format!("{} {}..{} {acc}", window.key_str()?, window.start, window.end).into_bytes())
//!     }
//! }
//!
//! weir_sdk::export_aggregate!(Clicks);
//! ```

use crate::runtime::{Context, Record, Setup, ValueState};
use crate::{Operator, Result, StateValue};

use weir_abi::WINDOW_ACC_STATE;

/// A window of one key: event times `start..end` (end exclusive), in ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window<'a> {
    pub key: &'a [u8],
    pub start: i64,
    pub end: i64,
}

impl<'a> Window<'a> {
    /// The key as UTF-8 text.
    pub fn key_str(&self) -> Result<&'a str> {
        Ok(std::str::from_utf8(self.key)?)
    }
}

/// An incremental aggregation over the records of a window.
pub trait Aggregate: Sized + 'static {
    /// The running state of one window; starts as `Default::default()`.
    type Acc: StateValue + Default;

    /// Builds the aggregate from the operator's `config` (JSON bytes, empty
    /// when none).
    fn init(config: &[u8]) -> Result<Self>;

    /// Folds one record into a window's accumulator.
    fn add(&mut self, acc: &mut Self::Acc, record: Record<'_>) -> Result<()>;

    /// Folds `other` into `acc`: two session windows became one.
    fn merge(&mut self, acc: &mut Self::Acc, other: Self::Acc) -> Result<()>;

    /// The value emitted when the window fires (keyed by the window's key,
    /// stamped with its last millisecond). With allowed lateness, a window
    /// fires again for every late record it accepts.
    fn result(&mut self, acc: &Self::Acc, window: Window<'_>) -> Result<Vec<u8>>;
}

/// One step the host asks of a window.
#[doc(hidden)]
pub enum WindowStep<'a> {
    Add(Record<'a>),
    Merge { from: u32 },
    Fire,
}

/// The operator that runs an [`Aggregate`]; see [`crate::export_aggregate!`].
pub struct Windowed<A: Aggregate> {
    aggregate: A,
    acc: ValueState<A::Acc>,
}

impl<A: Aggregate> Operator for Windowed<A> {
    fn init(setup: &mut Setup) -> Result<Self> {
        let aggregate = A::init(setup.config())?;
        Ok(Windowed {
            aggregate,
            acc: setup.value_state(WINDOW_ACC_STATE),
        })
    }

    fn process(&mut self, _record: Record<'_>, _ctx: &mut Context<'_>) -> Result<()> {
        Err("a window aggregate needs `window:` on its operator in the job spec".into())
    }

    fn window(
        &mut self,
        step: WindowStep<'_>,
        window: Window<'_>,
        ctx: &mut Context<'_>,
    ) -> Result<()> {
        match step {
            WindowStep::Add(record) => {
                let mut acc = ctx.get(&self.acc)?.unwrap_or_default();
                self.aggregate.add(&mut acc, record)?;
                ctx.set(&self.acc, &acc);
            }
            WindowStep::Merge { from } => {
                let mut acc = ctx.get(&self.acc)?.unwrap_or_default();
                let other = ctx.get_at(from, &self.acc)?.unwrap_or_default();
                self.aggregate.merge(&mut acc, other)?;
                ctx.set(&self.acc, &acc);
                ctx.clear_at(from, &self.acc);
            }
            WindowStep::Fire => {
                let acc = ctx.get(&self.acc)?.unwrap_or_default();
                let value = self.aggregate.result(&acc, window)?;
                ctx.emit_at(window.key, value, window.end.saturating_sub(1));
            }
        }
        Ok(())
    }
}
